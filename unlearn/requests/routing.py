"""Routing valid requests: each goes to exactly one place (accepted, acknowledged or rejected).

A valid request is accepted (it deletes samples not deleted before), acknowledged (a repeat of
a request id with the same content, or every sample it names is already deleted: a no-op), or
rejected (its id was used for different content).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from unlearn.requests.ledger import Ledger


@dataclass(frozen=True)
class Routing:
    """Where one valid request goes.

    Attributes:
        destination: "accepted", "acknowledged" or "rejected".
        outcome: For an acknowledgement "duplicate", "already_deleted" (every covering batch completed) or
            "already_requested" (a covering batch is not completed yet); for a rejection its
            reason code ("request_id_conflict"); None when accepted.
        sample_ids: Accepted: the ids it newly deletes (sorted).
        already_deleted_count: How many ids it names were deleted by earlier batches.
        covered_by: The batches that deleted those ids, oldest first.
        batch_id: A duplicate: the batch that holds the original (None if the original was
            itself only acknowledged).
        detail: One human-readable sentence.
    """

    destination: str
    outcome: str | None = None
    sample_ids: tuple[str, ...] = ()
    already_deleted_count: int = 0
    covered_by: tuple[str, ...] = ()
    batch_id: str | None = None
    detail: str = ""



class RequestRouter:
    """Routes the valid requests of one ingest, in arrival order.

    * A request id seen before (in the ledger, accepted or acknowledged, or earlier in this
      ingest) with the same :func:`content_digest` and subject is acknowledged as a "duplicate": a
      no-op. With a different digest, or another subject, it is rejected ("request_id_conflict").
    * Otherwise, ids already deleted by earlier batches are dropped from it: if none is left it
      is acknowledged as "already_deleted" (or "already_requested" while a batch that deletes them is not
      completed), else accepted with the remaining ids. Ids named by
      two requests of the same ingest are not "already deleted": both requests are accepted.

    Args:
        ledger: The ledger before this ingest.
        batch_id: The id the new batch will have if anything is accepted.
        subject_of: For a request a batch accepted before the ledger kept subject hashes: its subject hash as
            the batch's own file records it (request id, batch id -> hash or None), so an older record is
            compared on its subject too.
    """

    def __init__(self, ledger: Ledger, batch_id: str,
                 subject_of: Callable[[str, str], str | None] | None = None) -> None:
        self._ledger = ledger
        self._batch_id = batch_id
        self._subject_of = subject_of
        self._deleted_by = ledger.deleted_by()
        self._order = {b: i for i, b in enumerate(ledger.oldest_first())}
        self._seen: dict[str, tuple[str, str | None, Routing]] = {}  # this ingest: id -> (digest, subject, routing)

    def route(self, request_id: str, digest: str, wanted: Iterable[str], subject_hash: str | None = None) -> Routing:
        """Decide where one valid request goes.

        Args:
            request_id: Its id.
            digest: Its :func:`content_digest`.
            wanted: Every sample id it asks to delete (for a class: the class's training samples).
            subject_hash: Its salted subject hash. The same id and content for another subject is a conflict:
                it was acknowledged as "same request" and the second person's request absorbed into the
                first's, whose certificate names only the first subject (review of 2026-12-07). A record
                without a subject hash (older ledgers) is compared on content alone, as before.

        Returns:
            Its routing; an accepted or acknowledged one is remembered for later repeats.
        """
        if request_id in self._seen:
            first_digest, first_subject, first = self._seen[request_id]
            if digest != first_digest:
                return Routing("rejected", "request_id_conflict",
                               detail="request id used earlier in this ingest for different content")
            if _other_subject(first_subject, subject_hash):
                return Routing("rejected", "request_id_conflict",
                               detail="request id used earlier in this ingest for another subject")
            holder = self._batch_id if first.destination == "accepted" else first.batch_id
            return Routing("acknowledged", "duplicate", batch_id=holder, covered_by=first.covered_by,
                           detail="same request (id and content) earlier in this ingest")
        found = self._ledger.find_request(request_id)
        if found is not None:
            where = (f"accepted in {found['batch_id']}" if found["kind"] == "accepted"
                     else f"acknowledged ({found.get('outcome')})")
            if found.get("content_digest") is None:
                return Routing("rejected", "request_id_conflict",
                               detail=f"request id already {where}, recorded without a content digest: "
                                      "cannot confirm it is the same request; use a new id")
            if found["content_digest"] != digest:
                return Routing("rejected", "request_id_conflict",
                               detail=f"request id already {where} for different content; use a new id")
            recorded = found.get("subject_hash")
            if recorded is None and found["kind"] == "accepted" and self._subject_of is not None:
                recorded = self._subject_of(request_id, found["batch_id"])
            if _other_subject(recorded, subject_hash):
                return Routing("rejected", "request_id_conflict",
                               detail=f"request id already {where} for another subject; use a new id")
            routing = Routing("acknowledged", "duplicate", batch_id=found.get("batch_id"),
                              covered_by=tuple(found.get("covered_by", ())),
                              detail=f"same request (id and content) already {where}")
            self._seen[request_id] = (digest, subject_hash, routing)
            return routing
        wanted = sorted(set(wanted))
        fresh = tuple(s for s in wanted if s not in self._deleted_by)
        covered = tuple(sorted({self._deleted_by[s] for s in wanted if s in self._deleted_by},
                               key=self._order.__getitem__))
        if fresh:
            routing = Routing("accepted", sample_ids=fresh, already_deleted_count=len(wanted) - len(fresh),
                              covered_by=covered)
        elif all(self._ledger.batch(b)["status"] == Ledger.COMPLETED and "purged" in self._ledger.steps(b)
                 for b in covered):  # completed is set at promotion; the copies are gone only once purged
            routing = Routing("acknowledged", "already_deleted", already_deleted_count=len(wanted),
                              covered_by=covered, detail="every sample it names is already deleted")
        else:
            # Not "deleted": a covering batch may still be pending, held or not even prepared (review of
            # 2026-12-06: the requester and the audit log were told the samples were gone).
            routing = Routing("acknowledged", "already_requested", already_deleted_count=len(wanted),
                              covered_by=covered,
                              detail="every sample it names is in earlier requests whose deletion is not finished yet")
        self._seen[request_id] = (digest, subject_hash, routing)
        return routing


def _other_subject(recorded: str | None, subject_hash: str | None) -> bool:
    """Whether two salted subject hashes are known and differ (an older record without one: not known)."""
    return recorded is not None and subject_hash is not None and recorded != subject_hash
