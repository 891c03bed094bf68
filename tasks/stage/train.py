"""The train stage: the baseline model, registered as the first champion."""

from __future__ import annotations

import logging
import time
from typing import Any

from tasks import dvc_ops, progress, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    check_architecture,
    input_example,
    log_dataset,
    model_architecture,
    resolve_device,
    tensors,
)
from tasks.stage.state import write_state
from unlearn.config import Params
from unlearn.data import SampleStore
from unlearn.models import build_model
from unlearn.requests import Ledger
from unlearn.training import SGDRecipe, accuracy, nonfinite_tensors, seed_everything, train_model

log = logging.getLogger("unlearn.pipeline")


def _flat_params(params: Params) -> dict[str, Any]:
    out = {"seed": params.seed, "device": params.device, "model": params.model.name,
           "data_source": params.data.source}
    out.update({f"train_{k}": v for k, v in vars(params.train).items()})
    return out


def run_train(project: Project, *, force: bool = False) -> dict[str, Any]:
    """Train the baseline on the store's train split, unless a champion already exists.

    The run logs params, per-epoch metrics, the data version as a dataset input and the Git
    commit; the model is registered and, being the first, becomes ``champion``.

    Args:
        project: The project.
        force: Train and register a new baseline even if a champion exists (it does not
            take the alias from an existing champion).

    Returns:
        The champion version and whether training was skipped.
    """
    import mlflow

    params = project.params
    client = tracking.setup(project)
    champion = tracking.champion_version(project, client)
    if champion is not None and not force:
        check_architecture(project, champion)  # a changed model.name is refused here, the first stage it reaches
        return write_state(project, "train", {"skipped": True, "version": str(champion.version)})
    data_version = dvc_ops.data_version(project)
    if champion is None and not force:
        # A crash between registering the baseline and giving it the alias: reuse that version.
        for mv in tracking.all_versions(project, client):
            run = client.get_run(mv.run_id) if mv.run_id else None
            if (run is not None and run.data.tags.get("stage") == "train" and mv.tags.get("retired") != "true"
                    and run.data.tags.get("data_version") == data_version):
                tracking.move_champion(project, client, str(mv.version))
                return write_state(project, "train", {"skipped": True, "recovered": True,
                                                       "version": str(mv.version)})
    device = resolve_device(project)
    store = SampleStore(project.store_dir)
    ledger = Ledger(project.ledger_path)
    available = len(store.split_ids("train"))
    if available < params.train.min_samples:
        # Deletions left too little to train on: serving nothing is the honest state (see escalation's
        # withdrawal); training on a handful of samples would register a model nobody should use.
        log.info("train: %d training sample(s) < train.min_samples (%d): no model", available,
                 params.train.min_samples)
        return write_state(project, "train", {"skipped": True, "version": None, "reason": "too_few_samples",
                                               "train_samples": available})
    train, test = store.load_split("train"), store.load_split("test")
    train_t, test_t = tensors(train), tensors(test)
    seed_everything(params.seed)
    architecture = model_architecture(project, store)
    model = build_model(params.model.name, architecture["in_channels"], architecture["num_classes"])
    if ":" in params.model.name:
        # A torchvision builder or a user's factory, checked before any work: a model the registry cannot save
        # would otherwise fail after the whole training. The registered architectures are exported by a contract
        # test instead (tests/core/test_models_checks.py): the check's export costs about 1.8 s per process.
        tracking.check_exportable(model, input_example(store), params.model.name)
    recipe = SGDRecipe.from_config(params.train)
    started = time.perf_counter()
    commit = dvc_ops.git_commit(project)  # once: the run's tag and the version's name the same working tree
    with mlflow.start_run(run_name="baseline") as run:
        mlflow.log_params(_flat_params(params))
        mlflow.set_tags({"stage": "train", "git_commit": commit,
                         "data_version": data_version})
        log_dataset(store, data_version, "training")
        with progress.bar(recipe.epochs, "train baseline", unit="epoch") as bar:
            model = train_model(
                model, train_t.images, train_t.labels, recipe, device=device, seed=params.seed,
                on_epoch=progress.epoch_callback(bar, lambda epoch, m: mlflow.log_metrics(m, step=epoch)),
            )
        seconds = time.perf_counter() - started
        if nonfinite_tensors(model):
            # A diverged baseline predicts one class for everything; registered, it would be the champion.
            raise PipelineError(f"train: the baseline diverged (non-finite weights) with train.lr "
                                f"{params.train.lr}; lower the learning rate. Nothing was registered")
        metrics = {"train_acc": accuracy(model, train_t.images, train_t.labels, device=device),
                   "test_acc": accuracy(model, test_t.images, test_t.labels, device=device),
                   "train_seconds": seconds}
        mlflow.log_metrics(metrics)
        version, model_id = tracking.log_model(
            project, model, input_example(store), architecture=architecture, classes=store.classes,
            tags={"role": "baseline", "method": "train", "verdict": "baseline",
                  "parent_version": "", "data_version": data_version,
                  "data_version_before": "", "data_version_after": data_version,
                  "request_batches": "", "run_id": run.info.run_id,
                  # The store excludes every batch in the ledger, pending or not.
                  "covers_through": ledger.newest(ledger.batches),
                  "git_commit": commit},
        )
    if champion is None:
        tracking.move_champion(project, client, version)
    state = {"skipped": False, "version": version, "model_id": model_id, "run_id": run.info.run_id,
             "data_version": data_version, **metrics}
    log.info("train: version %s, test_acc %.4f, %.1fs", version, metrics["test_acc"], seconds)
    return write_state(project, "train", state)

