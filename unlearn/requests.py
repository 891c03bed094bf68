"""Deletion requests: parsing request files, and the ledger of every batch ever applied.

A request names the samples one person wants deleted (``sample_ids``), or a whole class to
forget (``forget_class``: every training sample of that class). Files arrive as JSON (one
object, a list of objects, or ``{"requests": [...]}``) or CSV (header ``request_id,sample_ids,
received_at,reason,subject_ref`` and optionally ``forget_class``; ``sample_ids`` separated by
``;`` or spaces). Parsing never
raises on bad content: a file that cannot be read at all is reported as a :class:`FileProblem`,
and each row becomes a :class:`RawRequest` whose fields are validated later (Great
Expectations, in ``tasks/``).

Subject references identify people, so they are never stored: :func:`hash_subject` keeps a
salted HMAC-SHA256 instead.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("request_id", "sample_ids", "forget_class", "received_at", "reason", "subject_ref")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a request file larger than this is refused unread


@dataclass(frozen=True)
class RawRequest:
    """One incoming row, before validation. Values are kept as given.

    Attributes:
        source_file: Name of the file it came from.
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
    """A file that could not be parsed at all (every row in it is unknowable)."""

    source_file: str
    code: str
    detail: str


@dataclass
class ParsedFile:
    """Result of parsing one file: rows, or a problem."""

    name: str
    requests: list[RawRequest] = field(default_factory=list)
    problem: FileProblem | None = None


def _split_ids(value: Any) -> Any:
    if isinstance(value, str):
        return [part for part in value.replace(";", " ").replace(",", " ").split() if part]
    return value


def _rows_to_requests(name: str, rows: list[Any]) -> list[RawRequest]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(RawRequest(name, i, {"__not_an_object__": True}))
            continue
        extra = tuple(sorted(str(k) for k in row if k not in FIELDS))
        out.append(RawRequest(name, i, {k: row[k] for k in FIELDS if k in row}, extra))
    return out


def parse_request_file(path: Path) -> ParsedFile:
    """Parse a request file by its extension (``.json`` or ``.csv``).

    Args:
        path: The file.

    Returns:
        The parsed rows, or a :class:`FileProblem` (unsupported type, too large, not UTF-8,
        malformed JSON/CSV, no rows).
    """
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        return ParsedFile(name, problem=FileProblem(name, "unsupported_file_type",
                                                    f"expected .json or .csv, got {suffix or 'no extension'}"))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return ParsedFile(name, problem=FileProblem(name, "file_too_large",
                                                    f"{size} bytes > {MAX_FILE_BYTES}"))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedFile(name, problem=FileProblem(name, "not_utf8", str(exc)))
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return ParsedFile(name, problem=FileProblem(name, "malformed_json", str(exc)))
        if isinstance(document, dict) and "requests" in document:
            document = document["requests"]
        rows = document if isinstance(document, list) else [document]
    else:
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            rows = list(reader)
            header = reader.fieldnames or []
        except csv.Error as exc:
            return ParsedFile(name, problem=FileProblem(name, "malformed_csv", str(exc)))
        if not header or "request_id" not in header:
            return ParsedFile(name, problem=FileProblem(
                name, "malformed_csv", f"header must name {', '.join(FIELDS)}; got {header}"))
        for row in rows:
            if None in row:  # more cells than header columns
                row.pop(None)
                row["__ragged__"] = True
            for key in ("sample_ids", "forget_class"):
                if row.get(key) == "":
                    del row[key]  # an empty CSV cell means the field is absent
            if "sample_ids" in row:
                row["sample_ids"] = _split_ids(row["sample_ids"])
    if not rows:
        return ParsedFile(name, problem=FileProblem(name, "empty_file", "no requests in file"))
    return ParsedFile(name, requests=_rows_to_requests(name, rows))


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
    return "hmac-sha256:" + hmac.new(salt, subject_ref.encode(), hashlib.sha256).hexdigest()


def hash_ids(sample_ids: list[str]) -> str:
    """A digest of a set of sample ids, for logs that must not list the ids themselves."""
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()[:16]


class LedgerError(RuntimeError):
    """The ledger file is corrupt or names an unknown batch."""


class Ledger:
    """Every deletion batch, its requests and samples, and its status.

    The sample store is the source minus every sample in the ledger, so a sample once
    deleted stays deleted whatever is rebuilt. Status moves pending -> completed (a verified
    model without the samples was promoted) or stays pending after a failed verification.

    Args:
        path: The ledger JSON file (created on first save).
    """

    PENDING, COMPLETED = "pending", "completed"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            try:
                document = json.loads(self.path.read_text())
                self.batches: dict[str, dict[str, Any]] = document["batches"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise LedgerError(f"deletion ledger {self.path} is corrupt: {exc}") from None
        else:
            self.batches = {}

    def deleted_ids(self) -> set[str]:
        """Every sample id deleted by any batch."""
        return {s for b in self.batches.values() for s in b["sample_ids"]}

    def request_ids(self) -> set[str]:
        """Every request id ever accepted."""
        return {r for b in self.batches.values() for r in b["request_ids"]}

    def pending(self) -> list[str]:
        """Batch ids not yet completed, oldest first."""
        return sorted((b for b, v in self.batches.items() if v["status"] == self.PENDING),
                      key=lambda b: self.batches[b]["created_at"])

    def add_batch(self, batch_id: str, request_ids: list[str], sample_ids: list[str],
                  created_at: str, forget_classes: list[int] | None = None) -> None:
        """Record a new pending batch (call :meth:`save` to persist).

        Args:
            batch_id: New batch id.
            request_ids: Accepted request ids.
            sample_ids: Every sample id the batch deletes.
            created_at: ISO-8601 time.
            forget_classes: Labels forgotten as whole classes (class-wise requests).
        """
        if batch_id in self.batches:
            raise LedgerError(f"batch {batch_id} already exists")
        self.batches[batch_id] = {
            "status": self.PENDING, "request_ids": sorted(request_ids),
            "sample_ids": sorted(set(sample_ids)), "created_at": created_at, "history": [],
            "forget_classes": sorted(set(forget_classes or [])),
        }

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
        write_json_atomic(self.path, {"version": 1, "batches": self.batches})


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
