"""The ledger of every deletion batch and every acknowledged request (``data/requests/ledger.json``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearn.files import utc_now, write_json_atomic


class LedgerError(RuntimeError):
    """The ledger file is corrupt or names an unknown batch."""



class Ledger:
    """Every deletion batch, its requests and samples, its status; and every acknowledged request.

    The sample store is the source minus every sample in the ledger, so a sample once
    deleted stays deleted whatever is rebuilt. Status moves pending -> promoting (a verified
    model without the samples is being promoted) -> completed, or stays pending after a
    failed verification. Acknowledged requests (repeats and requests for samples already
    deleted) delete nothing but are recorded, so their status can be looked up.

    The file is JSON ``{"version": 1, "batches": {...}, "acknowledged": {...}}``; a file
    written before acknowledgements existed (no ``acknowledged`` key) loads as having none.

    Args:
        path: The ledger JSON file (created on first save).

    Raises:
        LedgerError: If the file exists but is not a ledger.
    """

    PENDING, PROMOTING, COMPLETED = "pending", "promoting", "completed"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.batches: dict[str, dict[str, Any]] = {}
        self.acknowledged: dict[str, dict[str, Any]] = {}
        # Inbox entries the running ingest committed, by name: {"identity": [...], "sha256": ..., "ingest_id": ...}
        # (tasks/stage/ingest.py: an entry a crash left in the inbox after the commit is not processed twice).
        self.consumed_inbox: dict[str, dict[str, Any]] = {}
        # The ingest whose audit records are not all written yet (set at its commit, cleared after them).
        self.unrecorded_ingest: str | None = None
        if self.path.exists():
            try:
                document = json.loads(self.path.read_text())
                self.batches = document["batches"]
                self.acknowledged = document.get("acknowledged", {})
                self.consumed_inbox = document.get("consumed_inbox", {})
                self.unrecorded_ingest = document.get("unrecorded_ingest")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: also bad UTF-8
                raise LedgerError(f"deletion ledger {self.path} is corrupt: {exc}") from None
            if not isinstance(self.unrecorded_ingest, str | None):
                raise LedgerError(f"deletion ledger {self.path} is corrupt: unrecorded_ingest must be a string")
            if not all(isinstance(m, dict) for m in (self.batches, self.acknowledged, self.consumed_inbox)):
                raise LedgerError(f"deletion ledger {self.path} is corrupt: batches, acknowledged and consumed_inbox "
                                  "must be maps")
            if not all(isinstance(e, dict) and isinstance(e.get("identity"), list)
                       for e in self.consumed_inbox.values()):
                raise LedgerError(f"deletion ledger {self.path} is corrupt: a consumed_inbox entry is not a map with "
                                  "an identity list")
            # Each batch's own fields, checked once here: a batch missing one gave a KeyError traceback deep in a
            # stage (exit 1) instead of this error naming the file (review of 2026-12-07).
            for batch_id, batch in self.batches.items():
                problem = self._batch_problem(batch)
                if problem:
                    raise LedgerError(f"deletion ledger {self.path} is corrupt: batch {batch_id!r} {problem}")
        self._index: tuple[int, dict[str, str]] | None = None

    @staticmethod
    def _batch_problem(batch: Any) -> str:
        """What is wrong with one batch entry of the ledger file ("" when nothing)."""
        if not isinstance(batch, dict):
            return "is not a map"
        types = {"status": str, "request_ids": list, "sample_ids": list, "created_at": str, "history": list}
        missing = [k for k in types if k not in batch]
        if missing:
            return f"lacks {', '.join(missing)}"
        wrong = [k for k, t in types.items() if not isinstance(batch[k], t)]
        # its model retirements (version -> entry): a hand-edited entry that is not a map raised deep in a purge,
        # certify or doctor run (review of 2026-12-07)
        retirement = batch.get("retirement", {})
        if not isinstance(retirement, dict) or not all(isinstance(e, dict) for e in retirement.values()):
            wrong.append("retirement (a map of model version -> entry map)")
        return f"has a malformed {', '.join(wrong)}" if wrong else ""

    def oldest_first(self, batch_ids: Iterable[str] | None = None) -> list[str]:
        """``batch_ids`` (default: every batch) in ledger order: creation time, then id."""
        return sorted(self.batches if batch_ids is None else batch_ids,
                      key=lambda b: (self.batches[b]["created_at"], b))

    def rank(self) -> dict[str, int]:
        """Batch id -> its position in ledger order (0 is the oldest)."""
        return {b: i for i, b in enumerate(self.oldest_first())}

    def newest(self, batch_ids: Iterable[str]) -> str:
        """The most recent of ``batch_ids`` in ledger order, "" if none is in the ledger."""
        known = [b for b in batch_ids if b in self.batches]
        return self.oldest_first(known)[-1] if known else ""

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's record, to read: change it through the methods of this class.

        Raises:
            LedgerError: If the batch is unknown.
        """
        try:
            return self.batches[batch_id]
        except KeyError:
            raise LedgerError(f"unknown batch {batch_id}") from None

    def steps(self, batch_id: str) -> dict[str, str]:
        """Lifecycle step -> when the batch first reached it (see :meth:`mark_step`)."""
        return self.batch(batch_id).get("steps", {})

    def last_note(self, batch_id: str) -> dict[str, Any]:
        """The latest status note of a batch (``{}`` before its first status change)."""
        history = self.batch(batch_id)["history"]
        return history[-1] if history else {}

    def mark_step(self, batch_ids: Iterable[str], step: str, at: str | None = None) -> None:
        """Record when batches reached a lifecycle step, the first time only: the deletion's timeline.

        Args:
            batch_ids: The batches.
            step: A step name (``validated``, ``data_version``, ``unlearned``, ...).
            at: ISO-8601 time (default: now, to the microsecond).
        """
        at = at or utc_now(precise=True)
        for batch_id in batch_ids:
            self.batch(batch_id).setdefault("steps", {}).setdefault(step, at)

    def clear_steps(self, batch_ids: Iterable[str], steps: Iterable[str]) -> bool:
        """Forget when batches reached ``steps`` (a step redone from scratch is timed anew). Returns whether any
        was recorded."""
        cleared = False
        for batch_id in batch_ids:
            recorded = self.batch(batch_id).get("steps", {})
            for step in steps:
                cleared = recorded.pop(step, None) is not None or cleared
        return cleared

    def set_train_samples(self, batch_id: str, sample_ids: Iterable[str]) -> None:
        """The training samples the batch removes, as prepare found them (none: no model ever saw them, none
        retires). Certificates decide from these which request's samples a production model held, so the
        answer is the one prepare checked against the store, not a later recomputation from settings."""
        ids = sorted(str(i) for i in sample_ids)
        self.batch(batch_id).update({"train_samples": len(ids), "train_sample_ids": ids})

    def set_withdrawing(self, batch_ids: Iterable[str], version: str) -> None:
        """Record, before the registry changes, which champion the batches' withdrawal takes away (a re-run after
        a crash finds no champion alias left and would otherwise certify that none was withdrawn)."""
        for batch_id in batch_ids:
            self.batch(batch_id)["withdrawing"] = version

    def withdrawing(self, batch_ids: Iterable[str]) -> str | None:
        """The champion a withdrawal of these batches started to take away (None: none recorded)."""
        return next((self.batch(b)["withdrawing"] for b in batch_ids if self.batch(b).get("withdrawing")), None)

    def train_sample_ids(self, batch_id: str) -> set[str] | None:
        """The training samples prepare found the batch removes (None: not recorded, a ledger from before)."""
        ids = self.batch(batch_id).get("train_sample_ids")
        return None if ids is None else set(ids)

    def set_data_version_before(self, batch_id: str, version: str | None) -> None:
        """The data version the batch's samples were removed from; the first record stays (a re-run after a
        crash must not record its own half-done store)."""
        self.batch(batch_id).setdefault("data_version_before", version)

    def data_version_before(self, batch_id: str) -> str | None:
        """The data version the batch's samples were removed from (None before this was recorded)."""
        return self.batch(batch_id).get("data_version_before")

    def removed_training_samples(self, batch_id: str) -> bool:
        """Whether the batch removed a training sample (unknown counts as yes)."""
        return self.batch(batch_id).get("train_samples", 1) > 0

    def add_retired_references(self, batch_ids: Iterable[str], ref_ids: list[str]) -> None:
        """Record reference models retired because they trained on the batches' samples."""
        for batch_id in batch_ids:  # each once: a re-run of prepare records the same tombstones again
            known = self.batch(batch_id).setdefault("references_retired", [])
            known.extend(r for r in ref_ids if r not in known)

    def record_retirement(self, batch_id: str, version: str, entry: dict[str, Any]) -> None:
        """Record what happened to a model version the batch made retire (scheduled or retired)."""
        self.batch(batch_id).setdefault("retirement", {})[version] = entry

    def retirements_done(self, batch_id: str) -> bool:
        """Every version the batch made retire has had its artifacts deleted (none: no model version trained on its
        samples, e.g. they were deleted before the first baseline; the purge marks such a batch retired only when it
        could tell, :func:`tasks.lifecycle.retire_models`)."""
        return all(e.get("action") == "retired" for e in self.batch(batch_id).get("retirement", {}).values())

    def record_purge(self, batch_id: str, evidence: dict[str, Any]) -> None:
        """Record the purge evidence of a closed batch (counts and digests, never sample ids)."""
        self.batch(batch_id)["purge"] = evidence

    def set_certificate_final(self, batch_id: str, final: bool) -> None:
        """Whether the batch's certificates carry its final retirement evidence (else re-issued later)."""
        self.batch(batch_id)["certificate_final"] = final

    def _request_index(self) -> dict[str, str]:
        """Request id -> the (oldest) batch that accepted it; rebuilt when a batch is added."""
        if self._index is None or self._index[0] != len(self.batches):
            index: dict[str, str] = {}
            for batch_id in self.oldest_first(self.batches):
                for request_id in self.batches[batch_id]["request_ids"]:
                    index.setdefault(request_id, batch_id)
            self._index = (len(self.batches), index)
        return self._index[1]

    def deleted_ids(self) -> set[str]:
        """Every sample id deleted by any batch."""
        return {s for b in self.batches.values() for s in b["sample_ids"]}

    def deleted_by(self) -> dict[str, str]:
        """Sample id -> the oldest batch that deleted it."""
        out: dict[str, str] = {}
        for batch_id in self.oldest_first(self.batches):
            for sample_id in self.batches[batch_id]["sample_ids"]:
                out.setdefault(sample_id, batch_id)
        return out

    def request_ids(self) -> set[str]:
        """Every request id ever accepted (acknowledged ones are not: they deleted nothing)."""
        return set(self._request_index())

    def batches_with_status(self, status: str) -> list[str]:
        """Batch ids with the given status, oldest first."""
        return self.oldest_first(b for b, v in self.batches.items() if v["status"] == status)

    def pending(self) -> list[str]:
        """Batch ids waiting for a verified model, oldest first (not those being promoted)."""
        return self.batches_with_status(self.PENDING)

    def add_batch(self, batch_id: str, request_ids: list[str], sample_ids: list[str],
                  created_at: str, forget_classes: list[int] | None = None,
                  request_digests: dict[str, str] | None = None,
                  request_subjects: dict[str, str] | None = None) -> None:
        """Record a new pending batch (call :meth:`save` to persist).

        Args:
            batch_id: New batch id.
            request_ids: Accepted request ids.
            sample_ids: Every sample id the batch deletes.
            created_at: ISO-8601 time.
            forget_classes: Labels forgotten as whole classes (class-wise requests).
            request_digests: Request id -> :func:`content_digest`, so a later repeat of an
                id can be told apart from a conflicting reuse.
            request_subjects: Request id -> salted subject hash, so the same id and samples sent for
                another subject is a conflict, not a repeat.

        Raises:
            LedgerError: If the batch id exists already.
        """
        if batch_id in self.batches:
            raise LedgerError(f"batch {batch_id} already exists")
        self.batches[batch_id] = {
            "status": self.PENDING, "request_ids": sorted(request_ids),
            "sample_ids": sorted(set(sample_ids)), "created_at": created_at, "history": [],
            "forget_classes": sorted(set(forget_classes or [])),
            "request_digests": dict(sorted((request_digests or {}).items())),
            "request_subjects": dict(sorted((request_subjects or {}).items())),
        }

    def acknowledge(self, request_id: str, record: dict[str, Any]) -> None:
        """Record an acknowledged request (call :meth:`save` to persist).

        The first acknowledgement of an id is kept; a later one only counts a repeat
        (``repeats``, ``last_at``), so the record stays small however often an id is resent.

        Args:
            request_id: The request's id.
            record: ``outcome`` ("duplicate", "already_deleted" or "already_requested"), ``at``, ``subject_hash``,
                ``content_digest``, ``ingest_id`` and ``batch_id`` (duplicate: the batch that
                holds the original) or ``covered_by`` (the batches that deleted its samples).
        """
        existing = self.acknowledged.get(request_id)
        if existing is None:
            self.acknowledged[request_id] = dict(record)
        else:
            existing["repeats"] = existing.get("repeats", 0) + 1
            existing["last_at"] = record.get("at")

    def find_request(self, request_id: str) -> dict[str, Any] | None:
        """Where a request id was recorded.

        Args:
            request_id: The id.

        Returns:
            ``{"kind": "accepted", "request_id", "batch_id", "status", "created_at",
            "content_digest", "subject_hash"}`` (either None where the batch predates it; plus
            ``acknowledged``, the acknowledgement record, when the id was later resent), or
            ``{"kind": "acknowledged", "request_id", ...record}``, or None if the ledger never saw it
            (it may still be in a rejection log).
        """
        ack = self.acknowledged.get(request_id)
        batch_id = self._request_index().get(request_id)
        if batch_id is not None:
            batch = self.batches[batch_id]
            found = {"kind": "accepted", "request_id": request_id, "batch_id": batch_id,
                     "status": batch["status"], "created_at": batch["created_at"],
                     # None for batches recorded before digests were kept.
                     "content_digest": batch.get("request_digests", {}).get(request_id),
                     "subject_hash": batch.get("request_subjects", {}).get(request_id)}
            if ack is not None:
                found["acknowledged"] = dict(ack)
            return found
        if ack is not None:
            return {**ack, "kind": "acknowledged", "request_id": request_id}
        return None

    def forget_classes(self, batch_ids: list[str]) -> list[int]:
        """Labels forgotten as whole classes by any of the given batches."""
        return sorted({c for b in batch_ids for c in self.batches[b].get("forget_classes", [])})

    def set_status(self, batch_id: str, status: str, note: dict[str, Any]) -> None:
        """Change a batch's status and append ``note`` to its history."""
        if batch_id not in self.batches:
            raise LedgerError(f"unknown batch {batch_id}")
        self.batches[batch_id]["status"] = status
        self.batches[batch_id]["history"].append(note)

    def save(self) -> None:
        """Write atomically (temp file + rename)."""
        document = {"version": 1, "batches": self.batches, "acknowledged": self.acknowledged}
        if self.consumed_inbox:
            document["consumed_inbox"] = self.consumed_inbox
        if self.unrecorded_ingest:
            document["unrecorded_ingest"] = self.unrecorded_ingest
        write_json_atomic(self.path, document)
