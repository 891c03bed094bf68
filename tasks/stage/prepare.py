"""The prepare stage: quarantine pending forget samples, then materialise the store without every deleted sample."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tasks import dvc_ops
from tasks.project import PipelineError, Project
from tasks.stage.context import mark_step, quarantine_path, write_state
from tasks.stage.retrain import retrained_path
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays
from unlearn.references import ReferenceBank
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")


def run_prepare(project: Project) -> dict[str, Any]:
    """Materialise the sample store: the source minus every deleted sample.

    Forget samples of pending batches are first copied to ``data/quarantine/`` (local only,
    never pushed), because unlearning and verification need them; they are deleted when a
    verified model without them is promoted.

    Returns:
        Sample counts of the new store.
    """
    params = project.params
    source = load_source(params.data)
    ledger = Ledger(project.ledger_path)
    old_store = SampleStore(project.store_dir) if (project.store_dir / "index.csv").exists() else None
    train_mask = source.splits == "train"
    try:
        before = dvc_ops.data_version(project)  # dvc.lock still names the store this batch is removed from
    except PipelineError:
        before = None  # the first store: nothing came before it
    for batch_id in ledger.pending():
        # Kept from the first attempt: a re-run after a crash must not record its own half-done store.
        ledger.batches[batch_id].setdefault("data_version_before", before)
        path = quarantine_path(project, batch_id)
        if path.exists():
            continue
        wanted = np.isin(source.ids, ledger.batches[batch_id]["sample_ids"]) & train_mask
        ids = source.ids[wanted]
        if old_store is not None and all(i in old_store for i in ids):
            arrays = old_store.load(ids)  # the exact bytes the model was trained on
        else:
            arrays = Arrays(ids, source.images[wanted], source.labels[wanted])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=arrays.ids, images=arrays.images, labels=arrays.labels)
        os.replace(tmp, path)
        # Batches that removed no training sample never make a model retire (no model saw them).
        ledger.batches[batch_id]["train_samples"] = len(ids)
    deleted = ledger.deleted_ids()
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size, deleted)
    # Models trained on data that is now deleted are never used again: reference models that
    # trained on a deleted sample are retired (tombstoned), and exact retrains of an older data
    # version are removed.
    retired = ReferenceBank(project.references_dir).retire_containing(deleted, batches=ledger.pending())
    for ref_id in retired:
        log.info("prepare: retired reference %s (trained on deleted samples)", ref_id)
    for batch_id in ledger.pending():
        ledger.batches[batch_id].setdefault("references_retired", []).extend(retired)
    live = retrained_path(project, store)
    for path in project.models_dir.glob("retrained-*.pt"):
        if path != live:
            path.unlink()
    if ledger.pending():
        mark_step(ledger, ledger.pending(), "data_version")
        ledger.save()
    summary = {"num_samples": len(store), "num_train": int(store.meta["num_train"]),
               "num_test": int(store.meta["num_test"]), "deleted_total": len(deleted),
               "source": params.data.source, "references_retired": retired}
    log.info("prepare: %s", summary)
    return write_state(project, "prepare", summary)

