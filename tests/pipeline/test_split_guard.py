"""Settings that would move samples between splits under a trained model are refused (review of 2026-12-05).

A larger reference pool relabelled training samples the champion had seen as "pool"; a deletion of them was
then taken for data-only, certified "complete", and the champion kept them.
"""

import json

import pytest
import yaml
from conftest import FAST, run_stages

from tasks.project import PipelineError, load_project


def _set(root, section, key, value):
    """Set one params.yaml value (None: remove it, so the default applies); returns the one it replaces."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    for part in section:
        node = node[part]
    before = node.pop(key, None)
    if value is not None:
        node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return before


CHANGES = [  # (section, key, value, a move it causes)
    (("verify", "references"), "pool_fraction", 0.4, "train -> pool"),
    ((), "seed", 1, "pool -> train"),
    (("data",), "split_seed", 11, "test -> train"),
]


def test_a_split_change_under_a_trained_model_is_refused(make_project):
    from flows.cli import main

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    index = (project.store_dir / "index.csv").read_bytes()
    for section, key, value, move in CHANGES:
        before = _set(root, section, key, value)
        with pytest.raises(PipelineError, match=f"data split changed under trained models: .*{move}"):
            run_stages(load_project(root), "prepare")
        assert (project.store_dir / "index.csv").read_bytes() == index  # nothing was changed
        assert main(["--root", str(root), "stage", "prepare"]) == 2  # bad input, named
        _set(root, section, key, before)  # back to the values the store was built with
    assert main(["--root", str(root), "stage", "prepare"]) == 0


def test_before_any_training_the_split_may_still_change(make_project):
    root = make_project(FAST)
    run_stages(load_project(root), "ingest", "prepare")
    _set(root, ("verify", "references"), "pool_fraction", 0.4)
    run_stages(load_project(root), "prepare")  # no model saw the old split


def test_the_guard_reads_the_registry_not_a_state_file_and_survives_a_missing_store(make_project):
    """DVC deletes data/state/train.json before re-running the train stage (a failed `dvc repro -s train` left it
    gone and the split unguarded; review). With the store itself gone, prepare refuses to rebuild it from the source
    (its split under today's settings may not be what the models trained on; comparing with dvc.lock was both
    bypassable and wrong after `unlearn stage prepare`, which does not write it: third review): DVC restores it."""
    import shutil
    import sqlite3

    from tasks.stage import prepare

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    assert prepare.models_registered(project)  # read from the SQLite file directly...
    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: (_ for _ in ()).throw(sqlite3.OperationalError("locked"))
    try:
        assert prepare.models_registered(project)  # ...or, when that fails, through MLflow's client
    finally:
        sqlite3.connect = real_connect
    (project.state_dir / "train.json").unlink()
    before = _set(root, ("verify", "references"), "pool_fraction", 0.4)
    with pytest.raises(PipelineError, match="train -> pool"):
        run_stages(load_project(root), "prepare")
    _set(root, ("verify", "references"), "pool_fraction", before)
    store = project.store_dir.parent / "kept-store"
    shutil.move(project.store_dir, store)
    with pytest.raises(PipelineError, match="sample store is missing while registered models exist"):
        run_stages(load_project(root), "prepare")  # not rebuilt from the source, even with the same settings
    assert not project.store_dir.exists()
    shutil.move(store, project.store_dir)  # what `dvc checkout data/store` does
    run_stages(load_project(root), "prepare")


def test_no_model_ever_registered_leaves_the_split_free(make_project):
    """Too few samples for any model: the train stage registers nothing, so the split may still change."""
    root = make_project({**FAST, "train": {**FAST["train"], "min_samples": 100_000}})
    run_stages(load_project(root), "ingest", "prepare", "train")
    _set(root, ("data",), "test_fraction", 0.1)
    run_stages(load_project(root), "prepare")


def test_prepare_records_which_samples_were_trained_on_and_certificates_read_that(make_project):
    """A request naming only reference-pool samples was certified "complete" (the certificate read the source's
    train split, pool included), though no production model ever saw them. Prepare now records the batch's
    training samples in the ledger, also when a crash left its quarantine file but not the ledger's save."""
    from flows.cli import submit_request
    from tasks.certify import trained_ids
    from unlearn.data import SampleStore
    from unlearn.requests import Ledger

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare")
    store = SampleStore(project.store_dir)
    trained = sorted(store.split_ids("train")[:2].tolist())
    pool = sorted(store.split_ids("pool")[:2].tolist())
    submit_request(root, {"request_id": "R-MIX", "sample_ids": trained + pool, "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "carol@example.com"})
    run_stages(project, "ingest", "prepare")
    ledger = Ledger(project.ledger_path)
    (batch_id,) = ledger.pending()
    assert ledger.train_sample_ids(batch_id) == set(trained) and ledger.batch(batch_id)["train_samples"] == 2
    assert trained_ids(project, ledger, batch_id) == set(trained)

    for key in ("train_samples", "train_sample_ids"):  # the crash: quarantined, the ledger not yet saved
        del ledger.batches[batch_id][key]
    ledger.save()
    assert trained_ids(project, Ledger(project.ledger_path), batch_id) == set(trained)  # old ledgers: pool excluded
    run_stages(project, "prepare")
    assert Ledger(project.ledger_path).train_sample_ids(batch_id) == set(trained)  # read back from the quarantine


def test_a_lost_or_older_ledger_never_rebuilds_deleted_samples_into_the_store(make_project):
    """The ledger is kept out of Git: in a clean clone after `dvc pull` (the README's reproduction) prepare rebuilt
    the store from the source with no deletions, and the deleted samples were back (review of 2026-12-05)."""
    from flows.cli import main, submit_request
    from unlearn.data import SampleStore

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare")
    assert "deleted_total" not in SampleStore(project.store_dir).meta  # no deletion: the store's bytes as before
    gone = sorted(SampleStore(project.store_dir).split_ids("train")[:2].tolist())
    submit_request(root, {"request_id": "R-1", "sample_ids": gone, "received_at": "2026-11-24T10:00:00Z",
                          "reason": "gdpr_erasure", "subject_ref": "erin@example.com"})
    run_stages(project, "ingest", "prepare")
    assert SampleStore(project.store_dir).meta["deleted_total"] == 2
    index = (project.store_dir / "index.csv").read_bytes()
    saved = project.ledger_path.read_bytes()
    project.ledger_path.unlink()  # the clean clone: no ledger
    with pytest.raises(PipelineError, match="names 0 deleted sample.* built without 2.*bring deleted samples back"):
        run_stages(project, "prepare")
    assert main(["--root", str(root), "stage", "prepare"]) == 2
    assert (project.store_dir / "index.csv").read_bytes() == index and not any(
        i in SampleStore(project.store_dir) for i in gone)
    # A ledger as long as the right one that names other samples (restored from the wrong host or backup): the
    # count check passed it, and the rebuild brought the two deleted samples back.
    other = json.loads(saved)
    (batch,) = other["batches"].values()
    batch["sample_ids"] = sorted(SampleStore(project.store_dir).split_ids("train")[:2].tolist())
    project.ledger_path.write_text(json.dumps(other))
    with pytest.raises(PipelineError, match="built without 2 sample.*does not name 2 of them.*not the ledger"):
        run_stages(project, "prepare")
    assert (project.store_dir / "index.csv").read_bytes() == index
    project.ledger_path.write_bytes(saved)  # restored from the pipeline's host
    run_stages(project, "prepare")
    assert (project.store_dir / "index.csv").read_bytes() == index
