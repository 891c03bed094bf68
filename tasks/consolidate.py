"""Consolidation: retrain the champion exactly on the current data, off the request path (issue #12, item 4).

Why: approximate unlearning passes the gate with a residual inside the margin, and the residuals of many
batches add up (each batch is unlearned from a model that already carries the previous ones). An exact
retrain on the current data bounds that drift: it never saw any deleted sample. It runs on a schedule
(``gate.consolidate.cron`` / ``every_batches``) or once the share of the training set deleted since the
last exact model reaches ``gate.consolidate.deleted_fraction`` (:func:`unlearn.gate_policy.consolidate_due`).

Policy while batches are pending: consolidation does not run (it reports ``skipped``). Pending
batches go through the normal escalation first; a consolidated model registered beside an open
escalation would change the champion the escalation started from, and promote refuses such an
escalation (its model never forgot what the new champion forgot). The next scheduled run, or the
count rule after the pipeline finishes, consolidates then.

The new model goes through the registry path: registered with lineage tags (``method: consolidate``,
``exact: true``, parent, data versions, ``covers_through``), made ``champion`` (the old one becomes
``previous``). Versions that saw deleted samples the new champion covers are retired by purge's
existing rule (:func:`tasks.lifecycle.retire_models`), which the flow runs right after.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tasks import audit, dvc_ops, tracking
from tasks.project import Project
from tasks.stage.state import write_state
from unlearn.data import SampleStore
from unlearn.data.store import Arrays
from unlearn.gate_policy import consolidate_due
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")

EXACT_METHODS = ("train", "retrain", "consolidate")


def is_exact(tags: dict[str, str]) -> bool:
    """Whether a registered version was trained exactly (never saw a sample deleted before its data version).

    An exact-retrain rung counts only with ``evidence=exact`` (absent on baselines, "None" on versions whose report
    predates it): one that did not verify as the exact retrain and was promoted at low power is not exact (review of
    2026-12-07).
    """
    return tags.get("exact") == "true" or (tags.get("method") in EXACT_METHODS and tags.get("verdict") != "fail"
                                           and (tags.get("evidence", "exact") == "exact"
                                                or (tags.get("evidence") == "None" and tags.get("verdict") == "pass")))


def drift(project: Project, client: Any, ledger: Ledger) -> dict[str, Any]:
    """How far the data moved since the last exact model: the inputs of :func:`unlearn.gate_policy.consolidate_due`.

    The last exact model is the newest version that served as champion and was trained exactly (the
    baseline, an exact-retrain rung, a consolidation). Deletions since are the batches newer than its
    ``covers_through`` that removed training samples (their counts are in the ledger); the training set
    at that model is the live one plus those samples (the store only shrinks).

    Returns:
        ``last_exact_version`` (None when no exact model exists), ``deleted_since_exact``,
        ``train_size_at_exact``, ``deleted_fraction`` and ``batches_since_exact``.
    """
    versions = tracking.all_versions(project, client)
    # Versions that served: a consolidation registered but never made champion (a crash before the alias moved,
    # then newer data) says nothing about what the deployed models saw.
    served = served_versions(versions, tracking.champion_version(project, client))
    exact = [mv for mv in versions if is_exact(mv.tags) and str(mv.version) in served]
    train_now = len(SampleStore(project.store_dir).split_ids("train")) if (project.store_dir / "index.csv").exists() \
        else 0
    if not exact:
        return {"last_exact_version": None, "deleted_since_exact": 0, "train_size_at_exact": train_now,
                "deleted_fraction": None, "batches_since_exact": 0}
    last = exact[-1]
    rank = ledger.rank()
    covered = rank.get(last.tags.get("covers_through", ""), -1)
    since = [b for b in ledger.batches if rank[b] > covered and "train_samples" in ledger.batch(b)]
    deleted = sum(int(ledger.batch(b)["train_samples"]) for b in since)
    size = train_now + deleted
    return {"last_exact_version": str(last.version), "deleted_since_exact": deleted, "train_size_at_exact": size,
            "deleted_fraction": deleted / size if size else None,
            "batches_since_exact": sum(1 for b in since if ledger.removed_training_samples(b))}


def due(project: Project, client: Any, ledger: Ledger) -> bool:
    """Whether the fraction or count rule calls for a consolidation now."""
    state = drift(project, client, ledger)
    if state["last_exact_version"] is None or state["train_size_at_exact"] <= 0:
        return False
    config = project.params.gate.consolidate
    return consolidate_due(state["deleted_since_exact"], state["train_size_at_exact"],
                           state["batches_since_exact"], deleted_fraction=config.deleted_fraction,
                           every_batches=config.every_batches)


def run_consolidate(project: Project, *, force: bool = False) -> dict[str, Any]:
    """Retrain the champion exactly on the live training set and promote it, when due (or ``force``).

    Idempotent: a consolidation of the same data version registered before a crash is found again by
    its tags and only made champion; the exact retrain itself is cached (:mod:`tasks.stage.retrain`).

    Args:
        project: The project.
        force: Consolidate even when no rule calls for it (the cron schedule, ``unlearn consolidate``).

    Returns:
        The summary (also ``data/state/consolidate.json``): ``status`` consolidated, not_due or skipped.
    """
    import mlflow

    client = tracking.setup(project)
    ledger = Ledger(project.ledger_path)
    recovered = record_lost_consolidations(project, client)
    state = drift(project, client, ledger)
    champion = tracking.champion_version(project, client)
    if champion is not None and str(champion.version) in recovered:
        # A crash came after the alias moved and before the record (now written): report the consolidation
        # as done, so the flow's purge after a consolidation runs as it would have.
        return write_state(project, "consolidate", {
            "status": "consolidated", "version": str(champion.version), "recovered": True,
            "previous_champion": champion.tags.get("parent_version"),
            "data_version": champion.tags.get("data_version"), "forced": champion.tags.get("forced") == "true",
            **state})
    waiting = ledger.pending() + ledger.batches_with_status(Ledger.PROMOTING)
    if waiting:
        return write_state(project, "consolidate", {
            "status": "skipped", "reason": f"{len(waiting)} batch(es) pending: the escalation finishes them first",
            **state})
    if champion is None:
        return write_state(project, "consolidate", {"status": "skipped", "reason": "no champion", **state})
    data_version = dvc_ops.data_version(project)
    if is_exact(champion.tags) and champion.tags.get("data_version") == data_version:
        return write_state(project, "consolidate", {"status": "not_due", "reason": "the champion is already "
                                                    "exact on the current data", **state})
    if not force and not due(project, client, ledger):
        return write_state(project, "consolidate", {"status": "not_due", **state})
    audit.check_appendable(project)  # before hours of training: its record would be refused after them
    store = SampleStore(project.store_dir)
    version = _registered(project, client, data_version)
    if version is None:
        version = _train_and_register(project, client, store, ledger, champion, data_version, state, force, mlflow)
    audit.check_appendable(project)  # the record follows the move: a log that would refuse it stops the move
    previous = tracking.move_champion(project, client, version)
    registered = client.get_model_version(tracking.model_name(project), version)
    # the version's own tags: a version an earlier, crashed run registered keeps what that run measured and whether
    # it was forced (this run's values were recorded before; review of 2026-12-07)
    audit.record(project, "model.consolidated", model_version=version, previous_version=previous,
                 data_version=data_version, **_tagged_fields(registered.tags), **tracking.model_id_field(registered))
    log.info("consolidate: version %s (exact retrain on %s) is champion; previous %s", version, data_version,
             previous)
    return write_state(project, "consolidate", {"status": "consolidated", "version": version,
                                                "previous_champion": previous, "data_version": data_version,
                                                **state, **_tagged_fields(registered.tags)})


def served_versions(versions: list[Any], champion: Any) -> set[str]:
    """The versions that held the champion alias: the current one, and every version some later version was
    unlearned or consolidated from (only the champion is ever a parent)."""
    served = {str(mv.tags.get("parent_version")) for mv in versions if mv.tags.get("parent_version")}
    return served | ({str(champion.version)} if champion is not None else set())


def record_lost_consolidations(project: Project, client: Any) -> list[str]:
    """Write the ``model.consolidated`` record of every consolidation that served without one.

    The alias moves first and the record follows: a crash in between left the champion moved with no record,
    and a later promotion from it would hide that for good. The fields are the ones the consolidation tagged on
    its version when it registered it (None for versions registered before those tags). Runs with every
    pipeline run (:func:`tasks.stage.escalation.begin_unlearning`) and every consolidation.

    Returns:
        The versions recorded now.
    """
    versions = tracking.all_versions(project, client)
    consolidations = [mv for mv in versions if mv.tags.get("method") == "consolidate"]
    if not consolidations:
        return []
    served = served_versions(versions, tracking.champion_version(project, client))
    recorded = audit.records(project, "model.consolidated")
    written = []
    for mv in consolidations:
        version, tags = str(mv.version), mv.tags
        # matched on the model a record names, not the number alone (another registry's version N)
        if version in served and not any(tracking.record_names_version(r, mv) for r in recorded):
            audit.record(project, "model.consolidated", model_version=version,
                         previous_version=tags.get("parent_version"), data_version=tags.get("data_version"),
                         **_tagged_fields(tags), recovered=True, **tracking.model_id_field(mv))
            log.info("consolidate: recorded the consolidation of version %s (interrupted before its record)",
                     version)
            written.append(version)
    return written


def _tagged_fields(tags: dict[str, str]) -> dict[str, Any]:
    """The drift counts and ``forced`` a consolidation tagged on its version when it registered it (None for
    versions registered before those tags): what its ``model.consolidated`` record states."""
    count = {k: int(tags[k]) if tags.get(k, "").isdigit() else None for k in ("deleted_since_exact",
                                                                           "batches_since_exact")}
    return {**count, "forced": {"true": True, "false": False}.get(tags.get("forced", ""))}


def _registered(project: Project, client: Any, data_version: str) -> str | None:
    """A consolidation of ``data_version`` registered before (a crash before the alias moved)."""
    for mv in reversed(tracking.all_versions(project, client)):
        if (mv.tags.get("method") == "consolidate" and mv.tags.get("data_version") == data_version
                and mv.tags.get("retired") != "true"):
            return str(mv.version)
    return None


def _train_and_register(project: Project, client: Any, store: SampleStore, ledger: Ledger, champion: Any,
                        data_version: str, state: dict[str, Any], force: bool, mlflow: Any) -> str:
    # Imported here: `unlearn status` reads drift() without loading PyTorch.
    from tasks.stage.context import input_example, model_architecture, resolve_device, tensors, unlearning_data
    from tasks.stage.retrain import retrained_model
    from unlearn.training import accuracy

    params = project.params
    device = resolve_device(project)
    shape = (0, *store.image_shape)
    nothing = Arrays(np.zeros(0, dtype=str), np.zeros(shape, dtype=np.uint8), np.zeros(0, dtype=np.int64))
    data = unlearning_data(project, store, nothing)  # retain = the live training set
    architecture = model_architecture(project, store)
    commit = dvc_ops.git_commit(project)  # once: the run's tag and the version's name the same working tree
    with mlflow.start_run(run_name="consolidate") as run:
        model, seconds, cached = retrained_model(project, store, data)
        test = tensors(store.load_split("test"))
        metrics = {"train_acc": accuracy(model, data.retain.images, data.retain.labels, device=device),
                   "test_acc": accuracy(model, test.images, test.labels, device=device),
                   "retrain_seconds": seconds, "deleted_since_exact": state["deleted_since_exact"]}
        mlflow.log_params({"seed": params.seed, "model": params.model.name, "train_samples": len(data.retain),
                           "retrain_cached": cached})
        mlflow.set_tags({"stage": "consolidate", "data_version": data_version,
                         "git_commit": commit})
        mlflow.log_metrics(metrics)
        version, _ = tracking.log_model(
            project, model, input_example(store), architecture=architecture, classes=store.classes, tags={
            "role": "consolidated", "method": "consolidate", "exact": "true", "verdict": "exact",
            "parent_version": str(champion.version), "data_version": data_version,
            "data_version_before": champion.tags.get("data_version", ""), "data_version_after": data_version,
            "request_batches": "", "covers_through": ledger.newest(ledger.batches),
            "train_samples": str(len(data.retain)), "run_id": run.info.run_id,
            # what its model.consolidated record says, kept with the version for a record a crash cut off
            "deleted_since_exact": str(state["deleted_since_exact"]),
            "batches_since_exact": str(state["batches_since_exact"]), "forced": str(force).lower(),
            "git_commit": commit})
    return version
