"""Reference-model bank: pairs, reuse, retirement with tombstones, top-up; and the signal cache."""

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.attacks.signals import SignalCache, logit_scaled_confidence, model_digest, query_views, view_logits
from unlearn.references import RETIRED, ReferenceBank, members_digest

POOL = np.array([f"s{i:03d}" for i in range(101)])
KEY = "recipe-a"


def _fill(bank: ReferenceBank, pool=POOL, count=4, seed=0):
    plans = bank.plan(pool, count=count, recipe_key=KEY, seed=seed)
    for plan in plans:
        bank.add(plan, {"w": torch.full((2,), float(plan.seed))}, recipe_key=KEY, data_version="v1")
    return plans


def test_pairs_split_one_draw_into_disjoint_equal_halves(tmp_path):
    bank = ReferenceBank(tmp_path)
    plans = _fill(bank)
    assert [(p.pair, p.side) for p in plans] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {len(p.members) for p in plans} == {50}  # floor(101 / 2), all the same size
    for pair in (0, 1):
        a, b = (set(p.members) for p in plans if p.pair == pair)
        assert not a & b
    assert set(plans[0].members) != set(plans[2].members)  # pairs are independent draws
    # deterministic: the same seed plans the same members in a fresh bank
    again = ReferenceBank(tmp_path / "other").plan(POOL, count=4, recipe_key=KEY, seed=0)
    assert all(np.array_equal(p.members, q.members) for p, q in zip(plans, again, strict=True))


def test_full_bank_is_reused_and_survives_a_reload(tmp_path):
    bank = ReferenceBank(tmp_path)
    _fill(bank)
    reloaded = ReferenceBank(tmp_path)
    assert reloaded.plan(POOL, count=4, recipe_key=KEY, seed=0) == []
    assert len(reloaded.usable(KEY, POOL)) == 4
    record = reloaded.records["ref-p0s0-g0"]
    assert record.members_digest == members_digest(reloaded.members("ref-p0s0-g0"))
    assert torch.equal(reloaded.load_state("ref-p0s0-g0")["w"], torch.full((2,), float(record.seed)))


def test_deleting_a_sample_retires_exactly_the_models_that_trained_on_it(tmp_path):
    bank = ReferenceBank(tmp_path)
    plans = _fill(bank)
    victim = plans[0].members[0]
    holders = {p.ref_id for p in plans if victim in p.members}
    retired = bank.retire_containing({victim}, batches=["batch-1"])
    assert set(retired) == holders and len(holders) == 2  # one side of each pair holds it
    for ref_id in holders:
        record = bank.records[ref_id]
        assert record.status == RETIRED and record.retired_by == ("batch-1",)
        assert "deleted" in record.retired_reason
        assert not (tmp_path / ref_id).exists()  # weights and member list are gone
        with pytest.raises(ValueError, match="retired"):
            bank.load_state(ref_id)
    # the tombstone survives a reload; retired models are never usable again
    reloaded = ReferenceBank(tmp_path)
    assert all(reloaded.records[r].status == RETIRED for r in holders)
    pool = POOL[POOL != victim]
    assert {r.ref_id for r in reloaded.usable(KEY, pool)} == {p.ref_id for p in plans} - holders


def test_top_up_replaces_a_retired_side_with_the_complement_of_its_partner(tmp_path):
    bank = ReferenceBank(tmp_path)
    plans = _fill(bank)
    victim = plans[0].members[0]
    bank.retire_containing({victim}, batches=["b"])
    pool = POOL[POOL != victim]
    new = bank.plan(pool, count=4, recipe_key=KEY, seed=0)
    assert len(new) == 2 and all(p.generation == 1 for p in new)
    for plan in new:
        partner = next(p for p in plans if p.pair == plan.pair and p.side != plan.side)
        assert not set(plan.members) & set(partner.members)  # the pair stays disjoint
        assert victim not in plan.members and set(plan.members) <= set(pool)
    assert len({len(p.members) for p in new}) == 1


def test_a_recipe_change_makes_old_references_unusable(tmp_path):
    bank = ReferenceBank(tmp_path)
    _fill(bank)
    assert bank.usable("recipe-b", POOL) == []
    assert len(bank.retire_stale("recipe-b")) == 4
    assert all(r.status == RETIRED for r in bank.records.values())


def test_corrupt_index_is_reported(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        ReferenceBank(tmp_path)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += len(x)
        return self.fc(x.flatten(1))


def test_signal_cache_computes_each_row_once_and_drops_deleted_ids(tmp_path):
    model = _Linear()
    images = torch.rand(6, 1, 2, 2)
    ids = np.array([f"id{i}" for i in range(6)])
    cache = SignalCache(tmp_path)
    first = cache.logits(model, ids[:4], images[:4], augmentations="none", device="cpu")
    assert first.shape == (4, 1, 3) and model.calls == 4
    both = cache.logits(model, ids[2:], images[2:], augmentations="none", device="cpu")
    assert model.calls == 6  # only id4 and id5 were new
    assert torch.allclose(both[:2], first[2:])
    assert cache.drop_ids({"id2", "id5"}) == 2
    again = cache.logits(model, ids, images, augmentations="none", device="cpu")
    assert model.calls == 8  # the dropped rows had to be recomputed
    assert torch.allclose(again[:, 0], model.fc(images.flatten(1)).detach(), atol=1e-6)
    digest = model_digest(model)
    cache.drop_model(digest)
    assert not list(tmp_path.glob(f"{digest}-*"))


def test_evidence_reads_a_models_cache_file_once_and_matches_uncached_evidence(tmp_path, monkeypatch):
    """model_evidence asks the cache once per view setting (a reference's file holds every production and test
    sample: each read indexes all of them), asks for a sample in two sets once, and gets what it computes uncached."""
    from unlearn.methods.base import TensorSet
    from unlearn.verification import EvalSets, model_evidence

    model, images, labels = _Linear(), torch.rand(9, 1, 2, 2), torch.tensor([0, 1, 2] * 3)
    ids = np.array([f"id{i}" for i in range(9)])

    def subset(idx):
        return TensorSet(images[idx], labels[idx])

    forget, test, others = [0, 1, 2], [3, 4, 5, 6], [5, 6, 7, 8]  # 5 and 6: negatives and utility samples
    sets = EvalSets(subset(forget), subset([]), subset(test), others=subset(others),
                    ids={"forget": ids[forget], "retain": ids[[]], "test": ids[test], "others": ids[others]})
    cache = SignalCache(tmp_path)
    reads = []
    original = SignalCache.logits
    monkeypatch.setattr(SignalCache, "logits", lambda self, m, i, *a, **k: reads.append(len(i)) or original(
        self, m, i, *a, **k))
    cached = model_evidence(model, sets, device="cpu", cache=cache, with_retain=False)
    assert reads == [9] and model.calls == 9  # one call; samples 5 and 6 asked for and computed once
    again = model_evidence(model, sets, device="cpu", cache=cache, with_retain=False)
    assert model.calls == 9  # all from the file
    plain = model_evidence(model, sets, device="cpu", with_retain=False)
    for evidence in (cached, again):
        for name in ("forget", "test", "others"):
            assert np.allclose(getattr(evidence, name).loss, getattr(plain, name).loss, atol=1e-6), name
        assert np.allclose(evidence.test_phi, plain.test_phi, atol=1e-6)
    mirrored = model_evidence(model, sets, device="cpu", cache=cache, with_retain=False, augmentations="mirror")
    assert reads[-2:] == [7, 4]  # forget and test with the mirror views, the utility set with the plain view
    assert mirrored.forget_phi.shape == (3, 2) and np.allclose(mirrored.others.loss, plain.others.loss, atol=1e-6)


def test_evidence_asks_for_the_retain_set_last_refuses_a_diverged_model_first_and_checks_ids(tmp_path):
    """D_R (a candidate's: the whole training split) is asked for on its own after the small sets, so a model that
    diverged is refused before a pass over it; a set with more images than ids caches nothing under wrong ids."""
    from unlearn.methods.base import TensorSet
    from unlearn.verification import DivergedModelError, EvalSets, model_evidence

    images, labels = torch.rand(12, 1, 2, 2), torch.tensor([0, 1, 2] * 4)
    ids = np.array([f"id{i}" for i in range(12)])

    def evalsets(forget_ids=None):
        parts = {"forget": [0, 1], "retain": list(range(2, 10)), "test": [10, 11]}
        return EvalSets(*(TensorSet(images[parts[n]], labels[parts[n]]) for n in ("forget", "retain", "test")),
                        ids={n: ids[i] for n, i in parts.items()} | ({"forget": forget_ids} if forget_ids is not None
                                                                     else {}))

    model = _Linear()
    model_evidence(model, evalsets(), device="cpu", cache=SignalCache(tmp_path / "a"))
    assert model.calls == 12
    broken = _Linear()
    with torch.no_grad():
        broken.fc.weight.fill_(float("nan"))
    with pytest.raises(DivergedModelError, match="forget"):
        model_evidence(broken, evalsets(), device="cpu", cache=SignalCache(tmp_path / "b"))
    assert broken.calls == 4  # D_F and D_T; never the 8 samples of D_R
    assert not list((tmp_path / "b").glob("*.npz"))  # and its rows are not kept
    cache = SignalCache(tmp_path / "c")
    with pytest.raises(ValueError, match="forget set has 1 ids for 2 images"):
        model_evidence(_Linear(), evalsets(forget_ids=ids[:1]), device="cpu", cache=cache)
    assert not list((tmp_path / "c").glob("*.npz"))


def test_views_put_the_identity_first_and_phi_matches_its_definition():
    images = torch.rand(3, 1, 2, 2)
    for kind, count in (("none", 1), ("mirror", 2), ("mirror_shift", 18)):
        views = query_views(images, kind)
        assert len(views) == count and torch.equal(views[0], images)
        assert all(v.shape == images.shape for v in views)
    assert torch.equal(query_views(images, "mirror")[1], images.flip(-1))
    logits = view_logits(_Linear(), images, "mirror", device="cpu")  # (3, 2, 3)
    labels = torch.tensor([0, 1, 2])
    phi = logit_scaled_confidence(logits, labels)
    p = torch.softmax(logits.double(), -1)
    py = p.gather(-1, labels.view(-1, 1, 1).expand(-1, 2, 1))[..., 0]  # (3, 2)
    assert np.allclose(phi, torch.log(py / (1 - py)).numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="unknown augmentations"):
        query_views(images, "rotate")
