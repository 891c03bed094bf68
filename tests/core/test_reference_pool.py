"""The reference pool (issue #12): references never see production training samples or negatives."""

import numpy as np
import pytest
import torch

from unlearn.data.sources import SourceData
from unlearn.data.store import SampleStore
from unlearn.references import (
    LIVE,
    ReferenceBank,
    out_references,
    plan_pool_references,
    reference_pool_mask,
)

KEY = "recipe-a"


def _source(n=400, test=100):
    rng = np.random.default_rng(0)
    splits = np.array(["train"] * (n - test) + ["test"] * test)
    return SourceData(name="toy", ids=np.array([f"toy-{i:04d}" for i in range(n)]),
                      images=rng.integers(0, 255, (n, 1, 4, 4), dtype=np.uint8),
                      labels=rng.integers(0, 3, n).astype(np.int64), splits=splits, classes=["a", "b", "c"])


def test_pool_mask_is_per_sample_and_stable_under_deletions():
    ids = np.array([f"x{i}" for i in range(5000)])
    mask = reference_pool_mask(ids, 0.2, seed=0)
    assert 0.17 < mask.mean() < 0.23
    kept = np.random.default_rng(1).random(5000) < 0.7  # delete 30% of the others
    np.testing.assert_array_equal(reference_pool_mask(ids[kept], 0.2, seed=0), mask[kept])
    assert not np.array_equal(reference_pool_mask(ids, 0.2, seed=1), mask)  # the seed matters
    assert not reference_pool_mask(ids, 0.0, seed=0).any()
    with pytest.raises(ValueError, match="fraction"):
        reference_pool_mask(ids, 1.0, seed=0)


def test_store_labels_the_pool_and_production_training_never_reads_it(tmp_path):
    source = _source()
    store = SampleStore.materialize(tmp_path / "s", source, 64, set(), pool_fraction=0.25, pool_seed=3)
    train, pool, test = (set(store.split_ids(s).tolist()) for s in ("train", "pool", "test"))
    assert pool and train and not pool & train and not pool & test
    assert len(train | pool) == 300 and len(test) == 100
    assert store.meta["num_pool"] == len(pool) and store.meta["num_train"] == len(train)
    # deleting production samples never moves a sample between train and pool
    victims = set(sorted(train)[:20])
    after = SampleStore.materialize(tmp_path / "s", source, 64, victims, pool_fraction=0.25, pool_seed=3)
    assert set(after.split_ids("pool").tolist()) == pool
    assert set(after.split_ids("train").tolist()) == train - victims
    # without a pool nothing changes (byte-identical to a store written before the pool existed)
    plain = SampleStore.materialize(tmp_path / "p", source, 64, set())
    assert "num_pool" not in plain.meta and len(plain.split_ids("train")) == 300


def _pool_bank(tmp_path, pool, count=4):
    bank = ReferenceBank(tmp_path / "refs")
    for plan in plan_pool_references(bank, pool, count=count, recipe_key=KEY, seed=0):
        bank.add(plan, {"w": torch.zeros(1)}, recipe_key=KEY, data_version="v1")
    return bank


def test_pool_deletion_retires_exactly_the_references_that_saw_it(tmp_path):
    source = _source()
    store = SampleStore.materialize(tmp_path / "s", source, 64, set(), pool_fraction=0.25, pool_seed=3)
    pool, train = store.split_ids("pool"), store.split_ids("train")
    bank = _pool_bank(tmp_path, pool)
    live = sorted(bank.records)
    assert len(live) == 4
    # every reference trained on pool samples only
    for ref_id in live:
        assert set(bank.members(ref_id).tolist()) <= set(pool.tolist())
    # deleting production training samples retires nothing
    assert bank.affected_by(train[:50]) == []
    assert bank.retire_containing(set(train[:50].tolist()), batches=["b1"]) == []
    # deleting one pool sample retires exactly the references whose members contain it
    victim = pool[0]
    holders = sorted(r for r in live if victim in set(bank.members(r).tolist()))
    assert len(holders) == 2  # one side of each complementary pair
    assert bank.affected_by([victim]) == holders
    assert sorted(bank.retire_containing({victim}, batches=["b2"])) == holders
    assert sorted(r for r, rec in bank.records.items() if rec.status == LIVE) == sorted(set(live) - set(holders))
    # the top-up draws replacements from the pool minus the deleted sample
    remaining = np.array([p for p in pool if p != victim])
    plans = plan_pool_references(bank, remaining, count=4, recipe_key=KEY, seed=0)
    assert len(plans) == 2 and all(victim not in set(p.members.tolist()) for p in plans)


def test_forget_samples_and_negatives_are_out_for_every_scoring_reference(tmp_path):
    source = _source()
    store = SampleStore.materialize(tmp_path / "s", source, 64, set(), pool_fraction=0.25, pool_seed=3)
    pool, train, test = store.split_ids("pool"), store.split_ids("train"), store.split_ids("test")
    bank = _pool_bank(tmp_path, pool)
    live = sorted(bank.records)
    scored = np.concatenate([train[:30], test])  # forget samples + negatives
    assert out_references(bank, live, scored) == live  # pool references are OUT for all of them
    # a set that names a pool sample may only be scored by the references that did not train on it
    with_pool = np.concatenate([scored, pool[:1]])
    usable = out_references(bank, live, with_pool)
    assert usable and all(pool[0] not in set(bank.members(r).tolist()) for r in usable)
    assert len(usable) == 2
