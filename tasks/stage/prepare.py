"""The prepare stage: quarantine pending forget samples, then materialise the store without every deleted sample."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tasks import dvc_ops
from tasks.project import PipelineError, Project
from tasks.stage.context import quarantine_path
from tasks.stage.retrain import retrained_path
from tasks.stage.state import write_state
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays
from unlearn.files import atomic_path
from unlearn.models import check_model
from unlearn.references import ReferenceBank, reference_pool_mask
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")


def run_prepare(project: Project) -> dict[str, Any]:
    """Materialise the sample store: the source minus every deleted sample.

    Forget samples of pending batches are first copied to ``data/quarantine/`` (local only,
    never pushed), because unlearning and verification need them; they are deleted when a
    verified model without them is promoted.

    A share ``verify.references.pool_fraction`` of the training split is labelled ``pool`` (the
    reference pool, chosen per id so it is stable under deletions): production training never
    uses it, reference models train only on it. A deleted pool sample is no forget sample (no
    production model saw it); it retires exactly the reference models that trained on it.

    Returns:
        Sample counts of the new store.
    """
    params = project.params
    source = load_source(params.data)
    ledger = Ledger(project.ledger_path)
    old_store = SampleStore(project.store_dir) if (project.store_dir / "index.csv").exists() else None
    fraction = params.verify.references.pool_fraction
    train_mask = source.splits == "train"
    if fraction > 0:  # pool samples were never trained on by a production model: nothing to unlearn
        train_mask = train_mask.copy()
        train_mask[train_mask] = ~reference_pool_mask(source.ids[train_mask], fraction, params.seed)
    try:
        before = dvc_ops.data_version(project)  # dvc.lock still names the store this batch is removed from
    except PipelineError:
        before = None  # the first store: nothing came before it
    for batch_id in ledger.pending():
        ledger.set_data_version_before(batch_id, before)
        path = quarantine_path(project, batch_id)
        if path.exists():
            continue
        wanted = np.isin(source.ids, ledger.batch(batch_id)["sample_ids"]) & train_mask
        ids = source.ids[wanted]
        if old_store is not None and all(i in old_store for i in ids):
            arrays = old_store.load(ids)  # the exact bytes the model was trained on
        else:
            arrays = Arrays(ids, source.images[wanted], source.labels[wanted])
        with atomic_path(path) as tmp, tmp.open("wb") as handle:  # a file object: savez adds no suffix
            np.savez(handle, ids=arrays.ids, images=arrays.images, labels=arrays.labels)
        # Batches that removed no training sample never make a model retire (no model saw them).
        ledger.set_train_samples(batch_id, len(ids))
    deleted = ledger.deleted_ids()
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size, deleted,
                                    pool_fraction=fraction, pool_seed=params.seed)
    # The first stage that knows the data's shape: a model that does not fit it fails here, before training.
    check_model(params.model.name, store.image_shape, len(store.classes))
    # Models trained on data that is now deleted are never used again: reference models that
    # trained on a deleted sample are retired (tombstoned; with a pool only a deleted POOL sample
    # retires one), and exact retrains of an older data version are removed.
    retired = ReferenceBank(project.references_dir).retire_containing(deleted, batches=ledger.pending())
    for ref_id in retired:
        log.info("prepare: retired reference %s (trained on deleted samples)", ref_id)
    ledger.add_retired_references(ledger.pending(), retired)
    live = retrained_path(project, store)
    for path in project.models_dir.glob("retrained-*.pt"):
        if path != live:
            path.unlink()
    if ledger.pending():
        ledger.mark_step(ledger.pending(), "data_version")
        ledger.save()
    summary = {"num_samples": len(store), "num_train": int(store.meta["num_train"]),
               "num_test": int(store.meta["num_test"]), "deleted_total": len(deleted),
               "source": params.data.source, "references_retired": retired}
    log.info("prepare: %s", summary)
    return write_state(project, "prepare", summary)

