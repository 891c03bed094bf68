"""What every stage shares: state files, the device, the quarantine, tensors and MLflow tag helpers.

Nothing here runs a stage; each stage module imports what it needs from here, so the stages
never import each other for a helper.
"""

from __future__ import annotations

import functools
import logging
import pickle
from typing import Any

import numpy as np
import torch

from tasks import tracking
from tasks.project import PipelineError, Project, quarantine_path, read_quarantine
from unlearn.config import ConfigError
from unlearn.data import SampleStore
from unlearn.data.store import Arrays
from unlearn.methods import TensorSet, UnlearningData
from unlearn.models import build_model, check_model
from unlearn.training import SGDRecipe, to_float

log = logging.getLogger("unlearn.pipeline")


def tensors(arrays: Arrays) -> TensorSet:
    return TensorSet(to_float(arrays.images), torch.as_tensor(arrays.labels))


@functools.lru_cache(maxsize=32)
def _checked_model(name: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """:func:`unlearn.models.check_model`, once per process and setting: stages rebuild the model per reference
    model and attempt (a ResNet-18 check costs about 0.16 s on a CPU); a failed check is not cached."""
    check_model(name, image_shape, num_classes)


def model_architecture(project: Project, store: SampleStore) -> dict[str, Any]:
    """What :func:`unlearn.models.build_model` needs to rebuild the project's model for this store.

    ``model.name`` is checked against the store's shape and classes here, where every stage that builds a model
    asks (prepare checks it against the source only when it runs, and DVC does not re-run prepare for a changed
    ``model``): a model that does not fit fails with a ConfigError before any training or MLflow run starts.
    """
    _checked_model(project.params.model.name, tuple(store.image_shape), len(store.classes))
    return {"model": project.params.model.name, "in_channels": store.image_shape[0],
            "num_classes": len(store.classes)}


def check_architecture(project: Project, version: Any) -> None:
    """Refuse a ``model.name`` other than the architecture the registered ``version`` was trained as.

    Why: ``train`` keeps an existing champion (it never retrains one), so a changed ``model.name`` would have
    references, retrains and candidates built as the new architecture while the champion, the parent of every
    attempt, is the old one: a state-dict mismatch halfway through an attempt, after MLflow runs were opened.

    Raises:
        PipelineError: Naming both architectures and the way out.
    """
    trained = version.tags.get("arch_model") if version is not None else None
    if trained is not None and trained != project.params.model.name:
        raise PipelineError(
            f"model.name is {project.params.model.name!r} but the champion (version {version.version}) was trained "
            f"as {trained!r}: unlearning starts from the champion, so every model the pipeline builds must have its "
            f"architecture. Set model.name back to {trained!r}, or start a new project for the new architecture. "
            "Nothing was changed.")


def resolve_device(project: Project) -> str:
    """``params.yaml: device``, checked: an unavailable CUDA device fails before any work."""
    device = project.params.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return device


def load_forget(project: Project, batch_ids: list[str]) -> Arrays:
    """Forget samples (train split) of the given batches, from the quarantine."""
    parts = []
    for batch_id in batch_ids:
        try:
            parts.append(read_quarantine(project, batch_id))
        except FileNotFoundError:
            raise PipelineError(f"forget samples of {batch_id} missing ({quarantine_path(project, batch_id)}); "
                                "re-run prepare") from None
    ids = np.concatenate([p.ids for p in parts])
    _, first = np.unique(ids, return_index=True)  # two batches may name the same sample
    keep = np.sort(first)
    return Arrays(ids[keep], np.concatenate([p.images for p in parts])[keep],
                  np.concatenate([p.labels for p in parts])[keep])


def unlearning_data(project: Project, store: SampleStore, forget: Arrays) -> UnlearningData:
    """What an unlearning method gets: the forget and retain sets, the recipe and a model factory."""
    params = project.params
    retain = store.load_split("train")
    shape = model_architecture(project, store)
    return UnlearningData(
        forget=tensors(forget), retain=tensors(retain), num_classes=shape["num_classes"],
        train_recipe=SGDRecipe.from_config(params.train),
        model_factory=lambda: build_model(params.model.name, shape["in_channels"], shape["num_classes"]),
    )


def input_example(store: SampleStore) -> torch.Tensor:
    """A synthetic model input (zeros): a real sample would put personal data into the registry.

    Two images, not one: MLflow's pt2 format exports the model with ``torch.export``, which fixes a batch
    dimension of size 1 to a constant, and the registered model then refused any other batch size
    ("Guard failed: x.size()[0] == 1") for everyone who loads it from the registry.
    """
    return torch.zeros(2, *store.image_shape)


def log_dataset(store: SampleStore, data_version: str, context: str) -> None:
    """Record the store as a dataset input: name, DVC hash and schema; never its rows."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame({"label": store.labels, "split": store.splits})
    dataset = mlflow.data.from_pandas(frame, source=str(store.root), name="sample-store",
                                      digest=data_version.replace(".dir", "")[:32])
    tracking.log_dataset_input(dataset, context)  # retries the shared-server insert race


def tag_list(items: list[str], limit: int = 4000) -> str:
    """Comma-joined for an MLflow tag, truncated to fit (the ledger keeps the full list)."""
    joined = ",".join(items)
    return joined if len(joined) <= limit else f"{joined[:limit - 40].rsplit(',', 1)[0]},... ({len(items)} in all)"


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow rejects nothing, but NaN metrics make its UI charts useless: keep finite ones."""
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


def load_candidate_state(project: Project, candidate: str) -> dict[str, torch.Tensor]:
    """The weights an escalation attempt saved under ``data/models/`` (its ``candidate`` file name).

    Raises:
        PipelineError: If the file is missing or unreadable.
    """
    path = project.models_dir / candidate
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise PipelineError(f"candidate model {path.name} is missing or corrupt: {exc}; re-run unlearn") from None
