"""The exact retrain (the gate's target): its cache path and the model, cached or trained.

Shared by prepare (which prunes retrains of older data versions), the escalation's ``retrain``
rung, verify and method sweeps.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from tasks.project import PipelineError, Project
from tasks.stage.context import resolve_device
from unlearn.data import SampleStore
from unlearn.files import atomic_path
from unlearn.methods import UnlearningData, run_method
from unlearn.references import members_digest
from unlearn.training import TRAINER_VERSION, nonfinite_tensors


def _retrained_key(project: Project, train_ids: np.ndarray) -> str:
    """Cache key of the exact retrain: its training samples, seed, recipe and trainer version (a retrain cached
    by an older trainer is not the model today's would train)."""
    params = project.params
    return hashlib.sha256(json.dumps(
        [members_digest(train_ids), params.seed, vars(params.train), params.model.name, TRAINER_VERSION]
    ).encode()).hexdigest()[:16]


def retrained_path(project: Project, store: SampleStore) -> Path:
    """Where the exact retrain for the live training set is cached (it may not exist yet)."""
    return project.models_dir / f"retrained-{_retrained_key(project, store.split_ids('train'))}.pt"


def retrained_model(project: Project, store: SampleStore, data: UnlearningData) -> tuple[torch.nn.Module, float, bool]:
    """The exactly retrained model for the live training set (the gate's target): cached, or trained."""
    params = project.params
    path = retrained_path(project, store)
    model = data.model_factory()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), 0.0, True
    started = time.perf_counter()
    model = run_method("retrain", model, data, device=resolve_device(project), seed=params.seed)
    seconds = time.perf_counter() - started
    if nonfinite_tensors(model):
        # The exact retrain uses the baseline's recipe: if it diverges, the recipe is broken (train.lr), and
        # neither the gate's target, nor the exact rung, nor a consolidated champion may be this model.
        raise PipelineError(f"the exact retrain diverged (non-finite weights) with train.lr {params.train.lr}; "
                            "lower the learning rate. Nothing was cached, registered or promoted")
    with atomic_path(path) as tmp:
        torch.save(model.cpu().state_dict(), tmp)
    return model, seconds, False

