"""Unlearning methods, registered by name and chosen by ``unlearn.method`` in params.yaml."""

from unlearn.methods.base import (
    METHODS,
    MethodSpec,
    MissingDataError,
    TensorSet,
    UnlearningData,
    method_info,
    recalibrates_bn,
    register_method,
    run_method,
)

__all__ = [
    "METHODS",
    "MethodSpec",
    "MissingDataError",
    "TensorSet",
    "UnlearningData",
    "method_info",
    "recalibrates_bn",
    "register_method",
    "run_method",
]
