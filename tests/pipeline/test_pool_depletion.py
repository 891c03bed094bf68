"""Deletions that empty the reference pool: references fall back to the training split, nothing wedges."""

import json

import numpy as np
import pytest
from conftest import FAST, run_stages

pytestmark = pytest.mark.e2e


def _request(request_id, ids):
    return {"request_id": request_id, "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
            "subject_ref": f"subject-{request_id}", "sample_ids": ids}


def test_a_depleted_reference_pool_falls_back_to_the_training_split(champion_project):
    from flows.cli import main
    from tasks.doctor import diagnose
    from tasks.project import load_project
    from unlearn.data import SampleStore
    from unlearn.references import ReferenceBank

    root, _ = champion_project(FAST)  # baseline: 2 references on halves of the pool (about 270 samples)
    project = load_project(root)
    store = SampleStore(project.store_dir)
    pool = store.split_ids("pool").tolist()
    assert len(pool) >= 200
    # One batch deletes all of the pool but one sample (halves of 0 samples: the references stage
    # failed on it, and so on every later batch) and 30 training samples.
    train = store.split_ids("train")[:30].tolist()
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / "batch.json").write_text(json.dumps(
        [_request("POOL-1", pool[1:]), _request("TRAIN-1", train)]))
    run_stages(project, "ingest", "prepare")
    assert SampleStore(project.store_dir).split_ids("pool").tolist() == pool[:1]
    for stage in ("train", "references", "unlearn", "promote", "purge", "certify"):
        assert main(["--root", str(root), "stage", stage]) == 0, stage
    references = json.loads((project.state_dir / "references.json").read_text())
    assert references["pool_depleted"] is True and len(references["trained"]) == 2
    bank = ReferenceBank(project.references_dir)
    live_train = set(SampleStore(project.store_dir).split_ids("train").tolist())
    for ref_id in references["usable"]:  # trained on halves of the live training split, never on a forget sample
        members = set(bank.members(ref_id).tolist())
        assert members <= live_train and not members & set(train)
    promote = json.loads((project.state_dir / "promote.json").read_text())  # decided with those references
    assert promote["status"] in {"promoted", "held", "rejected"}, promote
    assert promote["verdict"] in {"pass", "fail", "inconclusive"}
    assert main(["--root", str(root), "request", "status", "TRAIN-1"]) == 0
    assert diagnose(project) == []


def test_a_pool_side_emptied_by_deletions_is_not_redrawn_from_nothing(make_project):
    """The pool as a whole can be large while the side the bank must redraw is nearly empty: deletions that
    took every member of one side leave only the surviving partner's members, and the complement the
    redraw comes from is the rest of the pool. Every planned reference must still hold gate.min_samples."""
    import torch

    from tasks.project import load_project
    from tasks.stage.references import plan_references, pool_in_use, recipe_key, reference_pool_ids
    from unlearn.data import SampleStore
    from unlearn.references import ReferenceBank

    root = make_project({**FAST, "verify": {**FAST["verify"], "references": {"count": 2, "pool_fraction": 0.2}}})
    project = load_project(root)
    run_stages(project, "ingest", "prepare")
    store = SampleStore(project.store_dir)
    pool = store.split_ids("pool")
    assert pool_in_use(project, store)
    bank = ReferenceBank(project.references_dir)
    key = recipe_key(project, store)
    for plan in plan_references(project):  # two halves of the pool, recorded as trained
        bank.add(plan, {"w": torch.zeros(1)}, recipe_key=key, data_version="")
    assert plan_references(project) == [] and pool_in_use(project, store)
    # Delete side 1's members and all but 5 of the rest: the survivor (side 0) keeps its half.
    side1 = bank.members("ref-p0s1-g0")
    rest = sorted(set(pool.tolist()) - set(side1.tolist()) - set(bank.members("ref-p0s0-g0").tolist()))
    gone = set(side1.tolist()) | set(rest[5:])
    assert bank.retire_containing(gone, batches=["B1"]) == ["ref-p0s1-g0"]
    live_pool = store.split_ids("pool")[~np.isin(store.split_ids("pool"), list(gone))]
    assert len(live_pool) // 2 >= project.params.gate.min_samples  # the pool alone still looks large enough

    class Shrunk:  # the live store after that deletion, without a full prepare
        def split_ids(self, split):
            return live_pool if split == "pool" else store.split_ids(split)

        def __getattr__(self, name):
            return getattr(store, name)

    assert not pool_in_use(project, Shrunk())  # the redraw would have 5 members: fall back
    assert np.array_equal(reference_pool_ids(project, Shrunk()), store.split_ids("train"))


def test_a_new_trainer_version_retires_cached_retrains_and_references(make_project, monkeypatch):
    """A retrain or reference cached by an older trainer (before balanced batches) is not the model today's
    trainer would give for the same recipe and seed: the keys that serve them must change with the trainer."""
    from tasks.project import load_project
    from tasks.stage import references, retrain
    from tasks.stage.references import recipe_key
    from tasks.stage.retrain import retrained_path
    from unlearn.data import SampleStore

    project = load_project(make_project())
    run_stages(project, "ingest", "prepare")
    store = SampleStore(project.store_dir)
    before = retrained_path(project, store), recipe_key(project, store)
    monkeypatch.setattr(retrain, "TRAINER_VERSION", retrain.TRAINER_VERSION + 1)
    monkeypatch.setattr(references, "TRAINER_VERSION", references.TRAINER_VERSION + 1)
    after = retrained_path(project, store), recipe_key(project, store)
    assert before[0] != after[0] and before[1] != after[1]
