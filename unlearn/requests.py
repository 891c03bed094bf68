"""Deletion requests: parsing request files, routing valid requests, and the ledger of every batch.

A request names the samples one person wants deleted (``sample_ids``), or a whole class to
forget (``forget_class``: every training sample of that class). Files arrive as JSON (one
object, a list of objects, or ``{"requests": [...]}``) or CSV (header ``request_id,sample_ids,
received_at,reason,subject_ref`` and optionally ``forget_class``; ``sample_ids`` separated by
``;`` or spaces), UTF-8 only. Parsing never raises on bad content: a file that cannot be read
at all is reported as a :class:`FileProblem`, and each row becomes a :class:`RawRequest` whose
fields are validated later (Great Expectations, in ``tasks/``). Files are read without
following symbolic links, and only regular files with a plain name are parsed.

A valid request then goes to exactly one place (:class:`RequestRouter`): accepted (it deletes
samples not deleted before), acknowledged (a repeat of a request id with the same content, or
every sample it names is already deleted: a no-op), or rejected (its id was used for different
content).

Subject references identify people, so they are never stored: :func:`hash_subject` keeps a
salted HMAC-SHA256 instead.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("request_id", "sample_ids", "forget_class", "received_at", "reason", "subject_ref")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a request file larger than this is refused unparsed
# Row markers set by the parser; validation reports them as structural problems.
NOT_AN_OBJECT, RAGGED_ROW = "__not_an_object__", "__ragged__"
# Plain names only: no path separators, no "..", no leading dot, no control or escape characters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 _.()+-]{0,199}")
_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", type(None): "null"}


@dataclass(frozen=True)
class RawRequest:
    """One incoming row, before validation. Values are kept as given.

    Attributes:
        source_file: Name of the file it came from (sanitised, see :func:`sanitize_file_name`).
        row: Position in that file (0-based).
        values: Field -> value as parsed (may be missing, of any type).
        extra_fields: Fields present that the schema does not know.
    """

    source_file: str
    row: int
    values: dict[str, Any]
    extra_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileProblem:
    """A file that could not be parsed at all (every row in it is unknowable).

    The detail never quotes the file's content: it may hold subject references.
    """

    source_file: str
    code: str
    detail: str


@dataclass
class ParsedFile:
    """Result of parsing one file: rows, or a problem.

    Attributes:
        name: The file's name, sanitised.
        requests: Its rows (empty when there is a problem).
        problem: Why the file could not be parsed, if so.
        size: Bytes in the file (None for something that is not a regular file).
        sha256: Hex digest of the content (None when it was not read).
    """

    name: str
    requests: list[RawRequest] = field(default_factory=list)
    problem: FileProblem | None = None
    size: int | None = None
    sha256: str | None = None


def skipped_in_inbox(name: str) -> bool:
    """Whether the inbox scan leaves a file alone: the ``.gitkeep`` placeholder and files still
    being written (``.NAME.tmp``, renamed into place when complete)."""
    return name == ".gitkeep" or (name.startswith(".") and name.endswith(".tmp"))


def sanitize_file_name(name: str) -> str:
    """A file name safe to record in logs: unchanged if plain, else a rewritten form plus a hash.

    Args:
        name: The name as found on disk (may hold any character but ``/``).

    Returns:
        ``name`` itself when it is a plain name, else its disallowed characters and ``..``
        replaced by ``_`` (at most 100 kept) and ``~`` plus 8 hex digits of its hash, so two
        hostile names never collapse into one.
    """
    if _SAFE_NAME.fullmatch(name) and ".." not in name:
        return name
    shown = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", name))[:100].lstrip(".")
    # surrogatepass: an undecodable byte in a name on disk arrives as a lone surrogate.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{shown or '_'}~{digest}"


@dataclass(frozen=True)
class _Read:
    data: bytes | None
    size: int | None
    sha256: str | None
    problem: tuple[str, str] | None = None


def _read_regular_file(path: Path, limit: int) -> _Read:
    """Read a regular file without following a symbolic link (O_NOFOLLOW) or blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            return _Read(None, None, None, ("not_a_regular_file", "a symbolic link (not followed, not read)"))
        return _Read(None, None, None, ("unreadable_file", f"cannot open: {exc.strerror}"))
    if stat.S_ISDIR(os.fstat(fd).st_mode):  # fdopen refuses a folder's descriptor
        os.close(fd)
        return _Read(None, None, None, ("not_a_regular_file", "a folder (request files only; not read)"))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return _Read(None, None, None, ("not_a_regular_file", "not a regular file (device, FIFO or socket)"))
        digest = hashlib.sha256()
        chunks, size = [], 0
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            else:
                chunks = []  # too large: hash it to the end, keep nothing
    if size > limit:
        return _Read(None, size, digest.hexdigest(), ("file_too_large", f"{size} bytes > {limit}"))
    return _Read(b"".join(chunks), size, digest.hexdigest())


def parse_request_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> ParsedFile:
    """Read and parse one request file from the inbox.

    Args:
        path: The file. A symbolic link is never followed; anything but a regular file, or a
            name that is not plain (``..``, a leading dot, path or control characters), is a
            problem and its content is not parsed.
        max_bytes: Larger files are refused unparsed.

    Returns:
        The parsed rows, or a :class:`FileProblem`; with the file's size and sha256 when it
        was read.
    """
    name = sanitize_file_name(path.name)
    read = _read_regular_file(path, max_bytes)
    if read.problem is not None:
        code, detail = read.problem
        return ParsedFile(name, problem=FileProblem(name, code, detail), size=read.size, sha256=read.sha256)
    if name != path.name:
        problem = FileProblem(name, "unsafe_file_name",
                              "file names may use letters, digits, space and _ . ( ) + - only, "
                              "must not start with a dot or contain '..'")
        return ParsedFile(name, problem=problem, size=read.size, sha256=read.sha256)
    parsed = parse_request_bytes(name, read.data)
    parsed.size, parsed.sha256 = read.size, read.sha256
    return parsed


def parse_request_bytes(name: str, data: bytes) -> ParsedFile:
    """Parse a request file's content by the extension of ``name`` (``.json`` or ``.csv``).

    Args:
        name: The file's (sanitised) name.
        data: Its bytes.

    Returns:
        The parsed rows, or a :class:`FileProblem` (unsupported type, empty, not UTF-8,
        malformed JSON/CSV, not a request document).
    """
    suffix = Path(name).suffix.lower()

    def problem(code: str, detail: str) -> ParsedFile:
        return ParsedFile(name, problem=FileProblem(name, code, detail))

    if suffix not in (".json", ".csv"):
        return problem("unsupported_file_type", f"expected .json or .csv, got {suffix or 'no extension'}")
    if not data.strip():
        return problem("empty_file", "the file is empty")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return problem("not_utf8", "UTF-16/32 byte-order mark: save the file as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return problem("not_utf8", f"not UTF-8 text: invalid byte at offset {exc.start}")
    if suffix == ".json":
        try:
            document = json.loads(text, object_pairs_hook=_unique_keys)
        except DuplicateKeyError as exc:
            return problem("duplicate_json_key", str(exc))
        except RecursionError:  # the C decoder stops at the interpreter's recursion limit
            return problem("malformed_json", "nested too deeply")
        except json.JSONDecodeError as exc:  # its message names the position, never the content
            return problem("malformed_json", f"{exc.msg} (line {exc.lineno}, column {exc.colno})")
        except ValueError as exc:  # e.g. an integer literal too long to convert
            return problem("malformed_json", str(exc).split(";")[0][:200])
        if isinstance(document, dict) and "requests" in document:
            document = document["requests"]
            if not isinstance(document, list):
                return problem("not_a_request_file", '"requests" must be a list of request objects, got a JSON '
                               + _json_type(document))
        if isinstance(document, dict):
            rows: list[Any] = [document]
        elif isinstance(document, list):
            rows = document
        else:
            return problem("not_a_request_file",
                           f"expected a request object or a list of them, got a JSON {_json_type(document)}")
    else:
        header, rows_or_error = _read_csv(text)
        if isinstance(rows_or_error, str):
            return problem("malformed_csv", rows_or_error)
        if "request_id" not in header:
            # Name the columns' count, not their text: a missing header means the first line is data.
            return problem("malformed_csv", f"the first line must be a header naming request_id and the other "
                                            f"fields ({', '.join(FIELDS)}); it has {len(header)} column(s) "
                                            "and no request_id")
        rows = rows_or_error
    if not rows:
        return problem("empty_file", "no requests in file")
    return ParsedFile(name, requests=_rows_to_requests(name, rows))


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice: which value counts is parser-dependent, so neither does."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate keys at any depth (the last one would win silently)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            # Name the key only when it is one of the schema's: any other key text may be personal data.
            shown = repr(key) if key in FIELDS or key == "requests" else "a key outside the schema"
            raise DuplicateKeyError(f"{shown} appears twice in one JSON object; send each field once")
        seen.add(key)
    return dict(pairs)


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "array" if isinstance(value, list) else "object")


def _read_csv(text: str) -> tuple[list[str], list[dict[str, Any]] | str]:
    """Header and rows of a CSV text, or an error message (never quoting the content)."""
    previous = csv.field_size_limit(MAX_FILE_BYTES)  # one request may name 100k ids in one cell
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        return [], f"line {reader.line_num}: {exc}"
    finally:
        csv.field_size_limit(previous)
    for row in rows:
        # More cells than the header (key None) or fewer (value None): the columns cannot be trusted.
        if None in row or any(value is None for value in row.values()):
            row.pop(None, None)
            row[RAGGED_ROW] = True
        for key in ("sample_ids", "forget_class"):
            if row.get(key) == "":
                del row[key]  # an empty CSV cell means the field is absent
        if isinstance(row.get("sample_ids"), str):
            row["sample_ids"] = _split_ids(row["sample_ids"])
    return header, rows


def _split_ids(value: str) -> list[str]:
    return [part for part in value.replace(";", " ").replace(",", " ").split() if part]


def _rows_to_requests(name: str, rows: list[Any]) -> list[RawRequest]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(RawRequest(name, i, {NOT_AN_OBJECT: True}))
            continue
        extra = tuple(sorted(str(k) for k in row if k not in FIELDS and k != RAGGED_ROW))
        values = {k: row[k] for k in FIELDS if k in row}
        if row.get(RAGGED_ROW):
            values[RAGGED_ROW] = True
        out.append(RawRequest(name, i, values, extra))
    return out


def content_digest(*, sample_ids: Iterable[str] | None = None, forget_class: str | None = None) -> str:
    """Digest of what a request deletes: its sorted unique sample ids, or its class name.

    Two requests with the same id and the same digest are the same request (a repeat is a
    no-op); the same id with a different digest is a conflict.

    Args:
        sample_ids: The ids a sample request names (order and repeats do not matter).
        forget_class: The class name a class request names.

    Returns:
        ``"sha256:"`` and 64 hex digits.

    Raises:
        ValueError: Unless exactly one of the two is given.
    """
    if (sample_ids is None) == (forget_class is None):
        raise ValueError("give exactly one of sample_ids or forget_class")
    canonical = ({"sample_ids": sorted(set(sample_ids))} if sample_ids is not None
                 else {"forget_class": str(forget_class)})
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def load_or_create_salt(path: Path) -> bytes:
    """Read the project's hashing salt, creating a random one on first use (mode 0600)."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(salt.hex())
    return salt


def hash_subject(subject_ref: str, salt: bytes) -> str:
    """Salted HMAC-SHA256 of a subject reference (the only form in which it is stored)."""
    # surrogatepass: a JSON string may hold a lone surrogate, which must hash, not crash.
    return "hmac-sha256:" + hmac.new(salt, subject_ref.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def hash_ids(sample_ids: list[str], salt: bytes) -> str:
    """A salted digest of a set of sample ids, for logs that must not list the ids themselves.

    Salted (HMAC-SHA256 with the project's secret salt): sample ids come from a public list, so
    a plain hash of a one- or two-sample request could be reversed by trying every combination.

    Args:
        sample_ids: The ids (order does not matter).
        salt: The project's hashing salt (:func:`load_or_create_salt`).

    Returns:
        ``"hmac-sha256:"`` and 16 hex digits.
    """
    digest = hmac.new(salt, "\n".join(sorted(sample_ids)).encode(), hashlib.sha256).hexdigest()
    return "hmac-sha256:" + digest[:16]


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
        if self.path.exists():
            try:
                document = json.loads(self.path.read_text())
                self.batches = document["batches"]
                self.acknowledged = document.get("acknowledged", {})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise LedgerError(f"deletion ledger {self.path} is corrupt: {exc}") from None
            if not isinstance(self.batches, dict) or not isinstance(self.acknowledged, dict):
                raise LedgerError(f"deletion ledger {self.path} is corrupt: batches and acknowledged must be maps")
        self._index: tuple[int, dict[str, str]] | None = None

    def _oldest_first(self, batch_ids: Iterable[str]) -> list[str]:
        return sorted(batch_ids, key=lambda b: (self.batches[b]["created_at"], b))

    def _request_index(self) -> dict[str, str]:
        """Request id -> the (oldest) batch that accepted it; rebuilt when a batch is added."""
        if self._index is None or self._index[0] != len(self.batches):
            index: dict[str, str] = {}
            for batch_id in self._oldest_first(self.batches):
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
        for batch_id in self._oldest_first(self.batches):
            for sample_id in self.batches[batch_id]["sample_ids"]:
                out.setdefault(sample_id, batch_id)
        return out

    def request_ids(self) -> set[str]:
        """Every request id ever accepted (acknowledged ones are not: they deleted nothing)."""
        return set(self._request_index())

    def batches_with_status(self, status: str) -> list[str]:
        """Batch ids with the given status, oldest first."""
        return self._oldest_first(b for b, v in self.batches.items() if v["status"] == status)

    def pending(self) -> list[str]:
        """Batch ids waiting for a verified model, oldest first (not those being promoted)."""
        return self.batches_with_status(self.PENDING)

    def add_batch(self, batch_id: str, request_ids: list[str], sample_ids: list[str],
                  created_at: str, forget_classes: list[int] | None = None,
                  request_digests: dict[str, str] | None = None) -> None:
        """Record a new pending batch (call :meth:`save` to persist).

        Args:
            batch_id: New batch id.
            request_ids: Accepted request ids.
            sample_ids: Every sample id the batch deletes.
            created_at: ISO-8601 time.
            forget_classes: Labels forgotten as whole classes (class-wise requests).
            request_digests: Request id -> :func:`content_digest`, so a later repeat of an
                id can be told apart from a conflicting reuse.

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
        }

    def acknowledge(self, request_id: str, record: dict[str, Any]) -> None:
        """Record an acknowledged request (call :meth:`save` to persist).

        The first acknowledgement of an id is kept; a later one only counts a repeat
        (``repeats``, ``last_at``), so the record stays small however often an id is resent.

        Args:
            request_id: The request's id.
            record: ``outcome`` ("duplicate" or "already_deleted"), ``at``, ``subject_hash``,
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
            "content_digest"}`` (plus ``acknowledged``, the acknowledgement record, when the id
            was later resent), or ``{"kind": "acknowledged", "request_id", ...record}``, or None
            if the ledger never saw it (it may still be in a rejection log).
        """
        ack = self.acknowledged.get(request_id)
        batch_id = self._request_index().get(request_id)
        if batch_id is not None:
            batch = self.batches[batch_id]
            found = {"kind": "accepted", "request_id": request_id, "batch_id": batch_id,
                     "status": batch["status"], "created_at": batch["created_at"],
                     # None for batches recorded before digests were kept.
                     "content_digest": batch.get("request_digests", {}).get(request_id)}
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
        write_json_atomic(self.path, {"version": 1, "batches": self.batches, "acknowledged": self.acknowledged})


@dataclass(frozen=True)
class Routing:
    """Where one valid request goes.

    Attributes:
        destination: "accepted", "acknowledged" or "rejected".
        outcome: For an acknowledgement "duplicate" or "already_deleted"; for a rejection its
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
      ingest) with the same :func:`content_digest` is acknowledged as a "duplicate": a no-op.
      With a different digest it is rejected ("request_id_conflict").
    * Otherwise, ids already deleted by earlier batches are dropped from it: if none is left it
      is acknowledged as "already_deleted", else accepted with the remaining ids. Ids named by
      two requests of the same ingest are not "already deleted": both requests are accepted.

    Args:
        ledger: The ledger before this ingest.
        batch_id: The id the new batch will have if anything is accepted.
    """

    def __init__(self, ledger: Ledger, batch_id: str) -> None:
        self._ledger = ledger
        self._batch_id = batch_id
        self._deleted_by = ledger.deleted_by()
        self._order = {b: i for i, b in enumerate(ledger._oldest_first(ledger.batches))}
        self._seen: dict[str, tuple[str, Routing]] = {}  # this ingest: id -> (digest, first routing)

    def route(self, request_id: str, digest: str, wanted: Iterable[str]) -> Routing:
        """Decide where one valid request goes.

        Args:
            request_id: Its id.
            digest: Its :func:`content_digest`.
            wanted: Every sample id it asks to delete (for a class: the class's training samples).

        Returns:
            Its routing; an accepted or acknowledged one is remembered for later repeats.
        """
        if request_id in self._seen:
            first_digest, first = self._seen[request_id]
            if digest != first_digest:
                return Routing("rejected", "request_id_conflict",
                               detail="request id used earlier in this ingest for different content")
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
            routing = Routing("acknowledged", "duplicate", batch_id=found.get("batch_id"),
                              covered_by=tuple(found.get("covered_by", ())),
                              detail=f"same request (id and content) already {where}")
            self._seen[request_id] = (digest, routing)
            return routing
        wanted = sorted(set(wanted))
        fresh = tuple(s for s in wanted if s not in self._deleted_by)
        covered = tuple(sorted({self._deleted_by[s] for s in wanted if s in self._deleted_by},
                               key=self._order.__getitem__))
        if fresh:
            routing = Routing("accepted", sample_ids=fresh, already_deleted_count=len(wanted) - len(fresh),
                              covered_by=covered)
        else:
            routing = Routing("acknowledged", "already_deleted", already_deleted_count=len(wanted),
                              covered_by=covered, detail="every sample it names is already deleted")
        self._seen[request_id] = (digest, routing)
        return routing


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, lines: list[dict[str, Any]]) -> None:
    """Write one JSON object per line to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    os.replace(tmp, path)
