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
from unlearn.data import SampleStore, SourceData, StoreError, load_source
from unlearn.data.store import Arrays, source_ids_digest, split_labels
from unlearn.files import atomic_path
from unlearn.models import check_model
from unlearn.references import ReferenceBank
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
    # The first stage that knows the data's shape: a model that does not fit it fails here, before anything is
    # written (the store, the quarantine), so a wrong factory leaves nothing behind.
    check_model(params.model.name, tuple(source.images.shape[1:]), len(source.classes))
    ledger = Ledger(project.ledger_path)
    old_store = SampleStore(project.store_dir) if (project.store_dir / "index.csv").exists() else None
    fraction = params.verify.references.pool_fraction
    splits = split_labels(source, fraction, params.seed)  # what the new store will say, sample by sample
    try:
        before = dvc_ops.data_version(project)  # dvc.lock still names the store this batch is removed from
    except PipelineError:
        before = None  # the first store: nothing came before it
    guard = old_store or SampleStore.interrupted_backup(project.store_dir)  # the store the last run left
    check_ledger_complete(guard, ledger, source.ids)
    if models_registered(project):
        if guard is None and before is not None:  # DVC recorded a store, and it is gone
            # Rebuilt from the source with today's settings, the store's split would be whatever they say, not
            # what the registered models trained on: the store must come back from DVC, which recorded it.
            raise PipelineError("the sample store is missing while registered models exist: restore it with "
                                "`dvc checkout data/store` (or `dvc pull`) before preparing; it is not rebuilt "
                                "from the source, whose split under today's settings may not be the one those "
                                "models trained on. Nothing was changed.")
        if guard is not None:
            check_split_unchanged(guard, splits, source.ids)
            check_content_unchanged(guard, source)
    # Pool samples were never trained on by a production model: nothing to unlearn.
    train_mask = splits == "train"
    for batch_id in ledger.pending():
        ledger.set_data_version_before(batch_id, before)
        path = quarantine_path(project, batch_id)
        if path.exists():
            if ledger.train_sample_ids(batch_id) is None:  # a crash came between the file and the ledger's save
                with np.load(path, allow_pickle=False) as saved:
                    ledger.set_train_samples(batch_id, saved["ids"].tolist())
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
        ledger.set_train_samples(batch_id, ids.tolist())
    deleted = ledger.deleted_ids()
    # A store from before the source digest keeps its bytes, and so its data version (a new version with no new
    # deletion would send consolidation into a retrain), until a deletion changes it anyway.
    digest = (guard is None or "source_ids_sha256" in guard.meta
              or len(deleted) != int(guard.meta.get("deleted_total", 0)))
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size, deleted,
                                    pool_fraction=fraction, pool_seed=params.seed, source_digest=digest)
    # Models trained on data that is now deleted are never used again: reference models that
    # trained on a deleted sample are retired (tombstoned; with a pool only a deleted POOL sample
    # retires one), and exact retrains of an older data version are removed.
    bank = ReferenceBank(project.references_dir)
    retired = []
    for batch_id in ledger.pending():  # each batch retires (and is credited with) the references its samples trained
        retired += bank.retire_containing(set(ledger.batch(batch_id)["sample_ids"]), batches=[batch_id],
                                          unreadable=False)
    retired += bank.retire_containing(deleted, batches=ledger.pending())  # and unreadable ones, credited to none
    for ref_id in retired:
        log.info("prepare: retired reference %s", ref_id)
    # What each batch retired, also on an earlier run that a crash cut off before the ledger's save (the bank is
    # saved first: the re-run retires nothing new, and the certificate would say none was retired).
    for batch_id in ledger.pending():
        ledger.add_retired_references([batch_id], bank.retired_by([batch_id]))
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


def check_ledger_complete(old_store: SampleStore | None, ledger: Ledger, source_ids: np.ndarray) -> None:
    """Refuse to rebuild the store from a ledger that does not delete every sample the store was built without.

    Why: the ledger (``data/requests/ledger.json``) is kept out of Git, since it names the deleted samples. In a
    clean clone, after ``dvc pull``, or from a backup older than the store, it is missing or short, and a build
    from it would put deleted samples back into the store (and into every model trained on it). A deletion is
    never undone, so the count only grows. A ledger restored from the wrong place can be as long and still name
    other samples: when the store was cut from this same source (its ``source_ids_sha256``), the source ids it
    lacks are exactly the samples it was built without, and each must be in the ledger.

    Raises:
        PipelineError: Naming the counts (never a sample id) and where the ledger must come from.
    """
    built_without = int(old_store.meta.get("deleted_total", 0)) if old_store is not None else 0
    deleted = ledger.deleted_ids()
    restore = ("Restore data/requests/ledger.json and data/requests/deletions.json from the pipeline's host (they "
               "are kept out of Git because they name the deleted samples) before preparing. Nothing was changed.")
    if len(deleted) < built_without:
        raise PipelineError(
            f"the deletion ledger names {len(deleted)} deleted sample(s) but the store was built without "
            f"{built_without}: {ledger.path} is missing or older than the store, and a rebuild from it would bring "
            f"deleted samples back. {restore}")
    if old_store is None or old_store.meta.get("source_ids_sha256") != source_ids_digest(source_ids):
        return  # another source (or a store from before the digest): only the count can be compared
    lacked = np.setdiff1d(np.asarray(source_ids, dtype=str), old_store.ids)
    unknown = int((~np.isin(lacked, np.array(sorted(deleted), dtype=str))).sum())
    if unknown:
        raise PipelineError(
            f"the store was built without {len(lacked)} sample(s) of this source, and the deletion ledger does not "
            f"name {unknown} of them: {ledger.path} is not the ledger this store was built from, and a rebuild "
            f"from it would bring deleted samples back. {restore}")


# The settings that decide which split a sample is in (named in the error, with the store's record of the pool).
SPLIT_SETTINGS = ("data.source", "data.source_path", "data.split_seed", "data.test_fraction", "data.train_subset",
                  "data.test_subset", "verify.references.pool_fraction", "seed (the pool's seed)")


def check_split_unchanged(old_store: SampleStore, splits_now: np.ndarray, ids_now: np.ndarray) -> None:
    """Refuse settings that would move a live sample of the store to another split once a model trained on it.

    Why: whether a deleted sample must be unlearned is decided by its split ("train": the
    production models saw it; "pool" or "test": they did not). The store's splits are the ones
    the trained models saw; recomputing them from changed settings (a larger reference pool, a new
    split seed, a smaller subset) would call samples the champion trained on "pool" or unknown,
    and a deletion of them would be certified as complete while the champion still holds them.

    Raises:
        PipelineError: Naming how many samples would move and between which splits (never which
            samples), the settings that decide the split, and the way out.
    """
    now = dict(zip(ids_now.tolist(), np.asarray(splits_now).tolist(), strict=True))
    moves: dict[str, int] = {}
    for sample_id, split in zip(old_store.ids.tolist(), old_store.splits.tolist(), strict=True):
        after = now.get(sample_id, "absent")
        if after != split:
            moves[f"{split} -> {after}"] = moves.get(f"{split} -> {after}", 0) + 1
    if not moves:
        return
    recorded = {"source": old_store.meta.get("source"),
                "pool_fraction": old_store.meta.get("pool_fraction", 0),  # absent: built without a pool
                "pool_seed": old_store.meta.get("pool_seed", "(no pool)")}
    raise PipelineError(
        f"the data split changed under trained models: {sum(moves.values())} samples of the store would change "
        f"split ({', '.join(f'{n} {move}' for move, n in sorted(moves.items()))}). The models trained on this "
        "store saw its splits, so deletions would be judged against the wrong ones. Set "
        f"{', '.join(SPLIT_SETTINGS)} back to the values the store was built with (its record: {recorded}), "
        "or start a new project for the new split."
        + (" Samples would leave the store (-> absent): a subset may grow under trained models, never shrink back, "
           "since models may have trained on what it added; the store holds them now."
           if any(move.endswith("-> absent") for move in moves) else "")
        + " Nothing was changed."
    )


def check_content_unchanged(old_store: SampleStore, source: SourceData, chunk: int = 4096) -> None:
    """Refuse a source whose pixels, labels or classes changed under the ids the trained models saw.

    Why: a sample id is a position in the source's files or a hash of a path, not of the content. Files
    replaced in ``data.source_path`` (a re-export, another dataset with the same file names, a resize by a
    changed ``data.image_size``) would rebuild the store with other bytes under the same ids: the registered
    models would then be evaluated, unlearned and certified against data they never saw. The split check
    (:func:`check_split_unchanged`) only compares ids and splits.

    Raises:
        PipelineError: Naming how many samples changed (never which), and the way out.
    """
    way_out = (f"Put back the files the store was built from (data.source {source.name!r}, data.source_path, "
               "data.image_size), or start a new project for the new data. If the files are the ones the store was "
               "built from, the source's reader changed (ImageFolder now skips hidden folders and scales 16-bit "
               "images): the store keeps what the models trained on, and a new project reads the files the new way. "
               "Nothing was changed.")
    if tuple(old_store.image_shape) != tuple(source.images.shape[1:]):
        raise PipelineError(f"the source's images changed shape under trained models: the store holds "
                            f"{tuple(old_store.image_shape)}, the source now gives {tuple(source.images.shape[1:])}. "
                            + way_out)
    if list(old_store.classes) != list(source.classes):
        raise PipelineError(f"the source's classes changed under trained models: the store was built with "
                            f"{len(old_store.classes)} classes {list(old_store.classes)}, the source now names "
                            f"{list(source.classes)}. " + way_out)
    position = {sample_id: i for i, sample_id in enumerate(source.ids.tolist())}
    common = [sample_id for sample_id in old_store.ids.tolist() if sample_id in position]
    pixels = labels = 0
    for start in range(0, len(common), chunk):  # chunked: a full Fashion-MNIST store is 55 MB of pixels
        ids = common[start:start + chunk]
        try:
            kept = old_store.load(ids)
        except StoreError as exc:  # e.g. an interrupted backup whose shards are gone
            raise PipelineError(f"the sample store the models trained on cannot be read ({exc}): restore it "
                                "with `dvc checkout data/store` (or `dvc pull`) before preparing. Nothing was "
                                "changed.") from None
        index = np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))
        labels += int((kept.labels != source.labels[index]).sum())
        pixels += int((kept.images != source.images[index]).reshape(len(ids), -1).any(axis=1).sum())
    if pixels or labels:
        raise PipelineError(f"the source's content changed under trained models: of the store's {len(common)} "
                            f"samples, {pixels} have other pixels and {labels} another label in the source now, "
                            "under the same ids. The registered models were trained, and deletions are verified, "
                            "on the store's bytes. " + way_out)


def models_registered(project: Project) -> bool:
    """Whether any version of this project's model was ever registered (then its split is fixed).

    The registry is the record of what trained, not a local state file (``data/state/train.json``
    is a DVC output that DVC itself deletes before re-running the train stage). When the registry
    cannot be read, the answer is yes: the split check then runs, and refuses only a changed split.
    """
    from tasks import tracking

    try:
        if not tracking.has_registry(project):
            return False
        uri = project.tracking_uri
        if uri.startswith("sqlite:///"):
            # The default SQLite store, read directly: MLflow's import and engine set-up cost ~2 s per prepare
            # process, the query a millisecond. Any surprise (schema, lock) falls through to the client.
            import sqlite3

            try:
                db = sqlite3.connect(f"file:{uri.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=10)
                try:
                    row = db.execute("SELECT 1 FROM model_versions WHERE name = ? LIMIT 1",
                                     (tracking.model_name(project),)).fetchone()
                finally:
                    db.close()
                return row is not None
            except sqlite3.Error:
                pass
        client = tracking.reader(project)
        # This project's model only: a shared (team) server holds other projects' models, which never trained
        # on this store. The name cannot drift from the one the models were registered under: the registry pin
        # (tasks.project.check_registry) refuses a renamed registry.model_name before any stage runs.
        return bool(client.search_model_versions(f"name='{tracking.model_name(project)}'", max_results=1))
    except Exception as exc:  # noqa: BLE001 - unknown means "assume models exist"
        log.info("prepare: the registry could not be read (%s); checking the split anyway", type(exc).__name__)
        return True
