"""A cache of reference models for membership inference, with lineage and retirement.

Reference POOL (issue #12): references are trained on a pool of training-split samples that
production training never uses (:func:`reference_pool_mask`, a per-id hash so membership of the
pool never changes when other samples are deleted). Then forget samples and test negatives are
OUT for every reference, deleting a production training sample never retires a reference, and a
deletion that names a pool sample retires exactly the references that trained on it
(:meth:`ReferenceBank.affected_by` / :meth:`ReferenceBank.retire_containing`). Plan pool
references with :func:`plan_pool_references`; pick the references that may score a set of
samples with :func:`out_references`.

Reference models (LiRA's and RMIA's "shadow" or "reference" models) are trained with the
deployed model's recipe on random halves of the non-deleted training samples, in
complementary pairs: the two models of a pair split one draw of the pool, so each live
training sample is IN for exactly one model per pair (balanced IN/OUT evidence for online
attacks in audits). Offline attacks at promotion time only need models OUT of the audited
samples: deleted samples and the test split are OUT for every live reference.

Rules the bank enforces:

* **Retirement.** A reference whose training data contains a sample that is later deleted
  is retired the moment the deletion is applied: its weights and its member list are deleted,
  and its record stays as a tombstone with the reason and the request batches. Retired models
  are never loaded again, so verification does not keep deleted data alive.
* **Reuse.** A live reference is reused by every later request as long as its recipe key
  matches the configuration and its members are all still in the pool.
* **Top-up.** Missing pair sides are re-drawn: the replacement for a retired side is the
  complement of its surviving partner within the current pool, so pairs stay disjoint.
  All references drawn in one top-up have the same size (the batched trainer needs it).

Layout under ``root``: ``index.json`` (every record, live and retired) and, per live model,
``<ref_id>/model.pt`` and ``<ref_id>/members.npy``. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

LIVE, RETIRED = "live", "retired"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def members_digest(ids: np.ndarray) -> str:
    """SHA-256 of the sorted member ids: the training set's identity in the lineage."""
    return hashlib.sha256("\n".join(sorted(np.asarray(ids).astype(str).tolist())).encode()).hexdigest()


def reference_pool_mask(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the training samples held out as the reference pool.

    A sample is in the pool when a hash of (seed, id) falls below ``fraction``: the decision
    depends on nothing but the sample itself, so deleting other samples, reordering the source
    or adding new ones never moves a sample in or out of the pool (a positional split would
    shift every later sample and retire every reference).

    Args:
        ids: Sample ids of the training split, shape (N,).
        fraction: Expected pool share, in [0, 1).
        seed: Seed of the split (part of the data's identity).

    Returns:
        Boolean mask, shape (N,).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"reference pool fraction must be in [0, 1), got {fraction}")
    draws = np.array([derive_seed("reference-pool", seed, i) / 0x80000000 for i in np.asarray(ids).astype(str)],
                     dtype=np.float64)
    return draws < fraction


def plan_pool_references(bank: ReferenceBank, pool_ids: np.ndarray, *, count: int, recipe_key: str,
                         seed: int) -> list[ReferencePlan]:
    """References still to train so that ``count`` live ones exist on the reference pool.

    Thin wrapper over :meth:`ReferenceBank.plan` whose pool is the held-out reference pool (not
    the live production training set): the per-batch path then never has to train one, except
    after a deletion that named a pool sample.

    Args:
        bank: The reference bank.
        pool_ids: Live ids of the reference pool, shape (P,).
        count: Wanted live references (even: complementary pairs over the pool).
        recipe_key: The current training recipe's key.
        seed: Base seed.

    Returns:
        Plans (members are pool samples only).
    """
    return bank.plan(np.asarray(pool_ids), count=count, recipe_key=recipe_key, seed=seed)


def out_references(bank: ReferenceBank, ref_ids: list[str], scored_ids: np.ndarray) -> list[str]:
    """The references that did not train on ANY of ``scored_ids`` (forget samples and negatives).

    Offline attacks compare the target with references that are OUT for the scored samples; a
    reference IN for one of them would make that sample look like a non-member of the target.

    Args:
        bank: The bank.
        ref_ids: Candidate live references.
        scored_ids: Ids of every sample the attack scores.

    Returns:
        The usable ids, in the given order.
    """
    scored = set(np.asarray(scored_ids).astype(str).tolist())
    return [r for r in ref_ids if not scored & set(bank.members(r).tolist())]


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any printable parts."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class ReferenceRecord:
    """Lineage of one reference model.

    Attributes:
        ref_id: Unique id (``ref-p<pair>s<side>-g<generation>``).
        pair: Pair index; the two sides of a pair have disjoint members.
        side: 0 or 1.
        generation: How many models this pair side has had before (0 for the first).
        seed: Training seed.
        recipe_key: Hash of the training recipe and architecture it was trained with.
        data_version: Data version of the pool it was drawn from.
        members_digest: :func:`members_digest` of its training samples.
        n_members: Number of training samples.
        created_at: UTC time of registration.
        status: "live" or "retired".
        retired_at: When it was retired (retired only).
        retired_reason: Why (retired only).
        retired_by: Request batches whose deletion retired it (retired only).
        extra: Free-form lineage (e.g. training seconds, git commit).
    """

    ref_id: str
    pair: int
    side: int
    generation: int
    seed: int
    recipe_key: str
    data_version: str
    members_digest: str
    n_members: int
    created_at: str
    status: str = LIVE
    retired_at: str | None = None
    retired_reason: str | None = None
    retired_by: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferencePlan:
    """One reference model to train.

    Attributes:
        ref_id: Id it will be registered under.
        pair: Pair index.
        side: Pair side.
        generation: Generation of this pair side.
        seed: Training seed.
        members: Sample ids it trains on, shape (M,).
    """

    ref_id: str
    pair: int
    side: int
    generation: int
    seed: int
    members: np.ndarray


class ReferenceBank:
    """Reference models on disk; see the module docstring for the rules.

    Args:
        root: Directory of the bank (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records: dict[str, ReferenceRecord] = {}
        try:
            raw = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            return
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference index {self.root / 'index.json'} is corrupt: {exc}") from None
        for item in raw["references"]:
            item["retired_by"] = tuple(item.get("retired_by", ()))
            self.records[item["ref_id"]] = ReferenceRecord(**item)

    # ------------------------------------------------------------------ persistence

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"references": [asdict(r) for r in sorted(self.records.values(), key=lambda r: r.ref_id)]}
        tmp = self.root / ".index.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.root / "index.json")

    def _dir(self, ref_id: str) -> Path:
        return self.root / ref_id

    def members(self, ref_id: str) -> np.ndarray:
        """Training sample ids of a live reference, shape (M,).

        Raises:
            ValueError: If the reference is retired or its files are missing.
        """
        record = self.records[ref_id]
        if record.status != LIVE:
            raise ValueError(f"reference {ref_id} is retired ({record.retired_reason}); it is never used again")
        try:
            return np.load(self._dir(ref_id) / "members.npy", allow_pickle=False)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"reference {ref_id}: member list missing or corrupt ({exc})") from None

    def load_state(self, ref_id: str) -> dict[str, torch.Tensor]:
        """Weights of a live reference (refused for retired ones)."""
        self.members(ref_id)  # raises for retired
        try:
            return torch.load(self._dir(ref_id) / "model.pt", map_location="cpu", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError) as exc:
            raise ValueError(f"reference {ref_id}: weights missing or corrupt ({exc})") from None

    def add(self, plan: ReferencePlan, state: dict[str, torch.Tensor], *, recipe_key: str,
            data_version: str, extra: dict[str, Any] | None = None) -> ReferenceRecord:
        """Store a trained reference and its lineage (files first, then the index: the commit point).

        Args:
            plan: What was trained.
            state: Its state dict.
            recipe_key: Recipe it was trained with.
            data_version: Data version of the pool.
            extra: Additional lineage.

        Returns:
            The new record.
        """
        folder = self._dir(plan.ref_id)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, folder / ".model.pt.tmp")
        os.replace(folder / ".model.pt.tmp", folder / "model.pt")
        with open(folder / ".members.tmp", "wb") as handle:
            np.save(handle, np.asarray(plan.members).astype(str), allow_pickle=False)
        os.replace(folder / ".members.tmp", folder / "members.npy")
        record = ReferenceRecord(
            ref_id=plan.ref_id, pair=plan.pair, side=plan.side, generation=plan.generation, seed=plan.seed,
            recipe_key=recipe_key, data_version=data_version, members_digest=members_digest(plan.members),
            n_members=len(plan.members), created_at=_now(), extra=dict(extra or {}),
        )
        self.records[plan.ref_id] = record
        self._save()
        return record

    # ------------------------------------------------------------------ queries

    def usable(self, recipe_key: str, pool: np.ndarray) -> list[ReferenceRecord]:
        """Live references trained with ``recipe_key`` whose members are all in ``pool``, by id."""
        pool_set = set(np.asarray(pool).astype(str).tolist())
        out = []
        for record in sorted(self.records.values(), key=lambda r: r.ref_id):
            if record.status != LIVE or record.recipe_key != recipe_key:
                continue
            if set(self.members(record.ref_id).tolist()) <= pool_set:
                out.append(record)
        return out

    # ------------------------------------------------------------------ retirement

    def affected_by(self, deleted_ids: set[str] | list[str] | np.ndarray) -> list[str]:
        """Live references that trained on any of ``deleted_ids`` (what a deletion would retire), by id.

        A dry run of :meth:`retire_containing`: with a reference pool, deleting production
        training samples affects none; deleting pool samples affects exactly the references
        whose member lists contain them.
        """
        deleted = set(np.asarray(list(deleted_ids)).astype(str).tolist())
        return sorted(r.ref_id for r in self.records.values()
                      if r.status == LIVE and deleted & set(self.members(r.ref_id).tolist()))

    def retire_containing(self, deleted_ids: set[str] | list[str], *, batches: list[str],
                          unreadable: bool = True) -> list[str]:
        """Retire every live reference that trained on any of ``deleted_ids``.

        Weights and member list are deleted; the record stays as a tombstone.

        Args:
            deleted_ids: Samples that are now deleted.
            batches: Request batches that deleted them (recorded on the tombstone).
            unreadable: Also retire references whose files are missing or corrupt (their members cannot be
                checked), naming no batch: no deletion is known to have retired them.

        Returns:
            Ids of the references retired now.
        """
        deleted = set(map(str, deleted_ids))
        retired = []
        for record in list(self.records.values()):
            if record.status != LIVE:
                continue
            try:
                members = set(self.members(record.ref_id).tolist())
                reason = "trained on deleted samples" if members & deleted else None
            except ValueError:
                reason = "files missing or corrupt" if unreadable else None
            if reason is not None:
                self._retire(record, reason, batches if reason == "trained on deleted samples" else [])
                retired.append(record.ref_id)
        if retired:
            self._save()
        return retired

    def retired_by(self, batches: list[str]) -> list[str]:
        """Ids of the references that a deletion in ``batches`` retired (tombstones naming any of them)."""
        wanted = set(batches)
        return sorted(r.ref_id for r in self.records.values() if r.status != LIVE and wanted & set(r.retired_by or ()))

    def retire_stale(self, recipe_key: str) -> list[str]:
        """Retire live references trained with another recipe (they can never be used)."""
        stale = [r for r in self.records.values() if r.status == LIVE and r.recipe_key != recipe_key]
        for record in stale:
            self._retire(record, "training recipe changed", [])
        if stale:
            self._save()
        return [r.ref_id for r in stale]

    def _retire(self, record: ReferenceRecord, reason: str, batches: list[str]) -> None:
        shutil.rmtree(self._dir(record.ref_id), ignore_errors=True)
        self.records[record.ref_id] = replace(
            record, status=RETIRED, retired_at=_now(), retired_reason=reason, retired_by=tuple(batches))

    # ------------------------------------------------------------------ planning

    def plan(self, pool: np.ndarray, *, count: int, recipe_key: str, seed: int) -> list[ReferencePlan]:
        """The references to train so that ``count`` usable ones exist.

        Args:
            pool: Ids of the live training samples, shape (N,).
            count: Wanted number of references (even: count // 2 pairs).
            recipe_key: Current recipe.
            seed: Base seed (with pair, side and generation it fixes every draw).

        Returns:
            Plans with members of one common size, at most ``len(pool) // 2``.
        """
        pool = np.sort(np.asarray(pool).astype(str))
        usable = {(r.pair, r.side): r for r in self.usable(recipe_key, pool)}
        half = len(pool) // 2
        raw: list[tuple[int, int, int, np.ndarray]] = []
        for pair in range(count // 2):
            missing = [side for side in (0, 1) if (pair, side) not in usable]
            if not missing:
                continue
            generation = 1 + max((r.generation for r in self.records.values() if r.pair == pair), default=-1)
            if len(missing) == 1:
                partner = usable[(pair, 1 - missing[0])]
                # The complement of the surviving side keeps the pair disjoint.
                rest = np.setdiff1d(pool, self.members(partner.ref_id))
                rng = np.random.default_rng(derive_seed(seed, pair, missing[0], generation, "draw"))
                members = rng.permutation(rest)[:half]
                raw.append((pair, missing[0], generation, members))
            else:
                rng = np.random.default_rng(derive_seed(seed, pair, generation, "draw"))
                order = rng.permutation(pool)
                raw.append((pair, 0, generation, order[:half]))
                raw.append((pair, 1, generation, order[half : 2 * half]))
        if not raw:
            return []
        size = min(len(m) for *_, m in raw)
        plans = []
        for pair, side, generation, members in raw:
            rng = np.random.default_rng(derive_seed(seed, pair, side, generation, "trim"))
            kept = np.sort(members if len(members) == size else rng.choice(members, size=size, replace=False))
            plans.append(ReferencePlan(
                ref_id=f"ref-p{pair}s{side}-g{generation}", pair=pair, side=side, generation=generation,
                seed=derive_seed(seed, pair, side, generation, "train"), members=kept))
        return plans
