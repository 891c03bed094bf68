"""The pipeline stages, one module each: the one implementation Prefect tasks and ``dvc repro`` both run.

Each ``run_<stage>(project)`` reads its inputs from the project directory / registry, writes
its outputs, records a small JSON state file under ``data/state/`` (what ``dvc.yaml`` tracks),
and returns a summary dict. Stages never log raw forget-set data or subject identifiers: logs
and MLflow hold counts, hashed id digests and batch ids only.

Modules depend downwards only (no circle): :mod:`~tasks.stage.context` (shared helpers) and
:mod:`~tasks.stage.checks` at the bottom; :mod:`~tasks.stage.retrain` (the exact-retrain cache)
and :mod:`~tasks.stage.evaluation` (what verify and sweeps share) in the middle; the stages on
top; :mod:`~tasks.stage.catalog` names them all. This file imports nothing, so importing one
stage never loads the others.
"""
