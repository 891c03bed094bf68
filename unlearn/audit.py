"""Append-only, hash-chained audit trail of deletion requests (JSON lines).

Every record carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous record's hash) and ``hash``
(SHA-256 of its own canonical JSON without ``hash``), so an edited, removed or reordered line
breaks the chain. A sidecar head anchor (``<log>.head`` with the suffix replaced, e.g.
``audit.head``) records the last ``seq``/``hash`` and catches what the chain alone cannot: lines
cut from the end. The chain alone has no secret key, so it detects accidents and naive tampering,
not a writer who recomputes every hash and the anchor, and it cannot tell a deleted log from one that
never existed: :meth:`AuditLog.verify` therefore also takes *expectations from outside the log*
(the number of records that must exist, and the ``(seq, hash)`` anchors quoted by certificates).

Keyed mode (optional): with a secret key kept outside the project, every record and the head anchor
also carry ``mac`` = HMAC-SHA256(key, hash). Someone who can write the project's files but does not
hold the key can then no longer rewrite history and re-hash it: the MACs would not verify. What keyed
mode does not prove: anything against a holder of the key (the pipeline itself holds it), that
events were recorded at all (a crash between a state change and its append can drop one), or that
the clock in ``at`` was right.

The trail must never hold personal data: field names such as ``subject_ref`` or ``sample_ids``
are refused at any depth (store :func:`unlearn.requests.hash_subject` digests and counts).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearn.files import write_text_atomic

GENESIS = "0" * 64
EVENT_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
RESERVED = frozenset({"seq", "at", "event", "prev", "hash", "mac"})
MIN_KEY_BYTES = 32
DENYLIST = frozenset({"subject_ref", "subject", "sample_ids", "images", "image", "labels", "email", "name"})
MAX_STRING = 4096
MAX_PROBLEMS = 50


class AuditError(RuntimeError):
    """The audit log cannot be appended to safely (torn, edited or truncated); run verify."""


@dataclass(frozen=True)
class AuditReport:
    """Outcome of :meth:`AuditLog.verify`.

    Attributes:
        ok: True when no problem was found.
        lines: Lines in the log file (a torn last line counts).
        head_seq: ``seq`` of the last parseable record in the log, None if there is none.
        head_hash: ``hash`` of that record, None if there is none.
        problems: Human-readable problems, each naming its line; at most ``MAX_PROBLEMS`` plus a count.
        keyed: True when the MACs were checked with a key (keyed mode), False for the plain hash chain.
    """

    ok: bool
    lines: int
    head_seq: int | None
    head_hash: str | None
    problems: tuple[str, ...]
    keyed: bool = False


@dataclass(frozen=True)
class Anchor:
    """A ``(seq, hash)`` pair quoted outside the log (a certificate, an MLflow tag) that must be in it.

    Attributes:
        source: Where the anchor was read, for the problem message (e.g. the certificate's file name).
        seq: The record's sequence number.
        hash: The record's hash.
    """

    source: str
    seq: int
    hash: str


def load_key(path: Path) -> bytes:
    """Read an audit HMAC key file (raw bytes, or hex text), refusing keys too short to be secret.

    Args:
        path: The key file; it should live outside the project (and outside anything backed up with it).

    Returns:
        The key bytes.

    Raises:
        AuditError: Missing, unreadable, readable or writable by every user of the machine (a key anyone
            can read signs nothing), or shorter than ``MIN_KEY_BYTES`` bytes of entropy.
    """
    try:
        raw = Path(path).read_bytes()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise AuditError(f"audit key file {path} cannot be read ({exc.strerror})") from exc
    if mode & 0o007:
        raise AuditError(f"audit key file {path} is accessible to every user (mode {mode & 0o777:o}); "
                         f"restrict it, e.g. `chmod 600 {path}`")
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if text else b""
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < MIN_KEY_BYTES:
        raise AuditError(f"audit key file {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are required "
                         "(e.g. `openssl rand -hex 32 > FILE`)")
    return key


def _mac(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k not in ("hash", "mac")})
                          .encode()).hexdigest()


def _check_value(field: str, value: Any) -> None:
    """Refuse denylisted keys and over-long strings anywhere inside ``value``."""
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise ValueError(f"audit field {field!r}: string longer than {MAX_STRING} characters")
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str) and key.lower() in DENYLIST:
                raise ValueError(f"audit field {field!r}: key {key!r} may hold personal data; store a hash")
            _check_value(f"{field}.{key}", inner)
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_value(f"{field}[{i}]", inner)


def _is_record(obj: Any) -> bool:
    return (isinstance(obj, dict) and type(obj.get("seq")) is int and isinstance(obj.get("hash"), str)
            and isinstance(obj.get("prev"), str))


def _head_fits(head: dict[str, Any], last: dict[str, Any]) -> bool:
    # One behind is the crash window between writing a line and moving the anchor, not tampering.
    return (head["seq"], head["hash"]) in {(last["seq"], last["hash"]), (last["seq"] - 1, last["prev"])}


class AuditLog:
    """A hash-chained JSON-lines audit log at ``path`` with its head anchor and lock file beside it."""

    def __init__(self, path: Path, key: bytes | None = None):
        """Point at a log; nothing is created until the first append.

        Args:
            path: The log file, e.g. ``data/audit/audit.jsonl``.
            key: HMAC key for keyed mode (see :func:`load_key`); None for the plain hash chain.
        """
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise AuditError(f"audit key must hold at least {MIN_KEY_BYTES} bytes")
        self.key = key
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        # A fresh open file description per call: flock then serializes threads as well as processes.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            # A read of a copy this process cannot write (a read-only mount, another user's project): nothing can
            # append to it through this process, so it is read without the lock. A writer still needs the lock.
            if mode != fcntl.LOCK_SH or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            yield
            return
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_head(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AuditError(f"head anchor {self.head_path} is unreadable ({exc}); run verify") from exc
        if not (isinstance(head, dict) and type(head.get("seq")) is int and isinstance(head.get("hash"), str)):
            raise AuditError(f"head anchor {self.head_path} is malformed; run verify")
        return head

    def _write_head(self, seq: int, digest: str) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if self.key is not None:
            head["mac"] = _mac(self.key, f"head:{seq}:{digest}")
        # flushed before the rename and the folder after it (the rename, and a new log file, are durable)
        write_text_atomic(self.head_path, json.dumps(head))

    def _last_record(self, fd: int) -> dict[str, Any] | None:
        """The last record of the open log, checked; raises AuditError if the tail is unsafe to chain onto."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        if os.pread(fd, 1, size - 1) != b"\n":
            raise AuditError(f"{self.path} does not end with a newline (torn write?); run verify, then repair")
        start, chunk = size - 1, b""
        while start > 0 and b"\n" not in chunk:  # read backwards until the previous newline
            step = min(4096, start)
            start -= step
            chunk = os.pread(fd, step, start) + chunk
        line = chunk.rsplit(b"\n", 1)[-1]  # chunk stops short of the final newline
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not _is_record(record) or _digest(record) != record["hash"]:
            raise AuditError(f"last line of {self.path} is not a valid record; run verify")
        return record

    def _appendable_tail(self, fd: int) -> dict[str, Any] | None:
        """The last record of the open log, after every check an append makes before it writes."""
        last, head = self._last_record(fd), self._read_head()
        if last is None and head is not None:
            raise AuditError(f"{self.path} is empty but its head anchor says seq {head['seq']}; run verify")
        if last is not None and self.key is None and "mac" in last:
            raise AuditError(f"{self.path} is keyed (its records carry MACs): appending needs the key "
                             "(UNLEARN_AUDIT_KEY_FILE)")
        if last is not None and head is None:
            raise AuditError(f"head anchor {self.head_path} is missing; run verify")
        if last is not None and not _head_fits(head, last):
            raise AuditError(f"{self.path} disagrees with its head anchor (truncated?); run verify")
        return last

    def check_appendable(self) -> None:
        """Raise what :meth:`append` would raise about the log itself, appending nothing (a missing log stays
        missing).

        For a step whose record must follow an action it cannot undo (a moved champion alias): it checks
        first, so that a log that refuses appends stops the step before the action, not after it.

        Raises:
            AuditError: The log's tail is torn or invalid, disagrees with the head anchor, or is keyed and
                this log has no key.
            OSError: The log cannot be opened for appending.
        """
        with self._locked(fcntl.LOCK_EX):
            if not os.access(self.path.parent, os.W_OK):  # the head anchor is replaced there (and a first log made)
                raise OSError(errno.EACCES, f"{self.path.parent} is not writable (the audit head anchor goes there)")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                if self._read_head() is not None:
                    raise AuditError(f"{self.path} is missing but its head anchor exists; run verify") from None
                return  # the first append creates it
            try:
                self._appendable_tail(fd)
            finally:
                os.close(fd)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record, durably, and move the head anchor to it.

        Args:
            event: Event name matching ``^[a-z][a-z0-9_.]{0,63}$``, e.g. ``request.received``.
            **fields: JSON-serialisable values; never personal data (see module docstring).

        Returns:
            The record as written, including ``seq``, ``at``, ``prev`` and ``hash``.

        Raises:
            ValueError: Bad event name, reserved or denylisted field name, long string, or a value
                that is not JSON-serialisable.
            AuditError: The log's tail is torn or invalid, or disagrees with the head anchor.
        """
        if not isinstance(event, str) or not EVENT_RE.fullmatch(event):
            raise ValueError(f"invalid audit event name {event!r}")
        for key, value in fields.items():
            if key in RESERVED:
                raise ValueError(f"audit field {key!r} is reserved")
            if key.lower() in DENYLIST:
                raise ValueError(f"audit field {key!r} may hold personal data; store a hash")
            try:
                _canonical(value)  # first, so that a circular value cannot recurse in _check_value
            except (TypeError, ValueError) as exc:
                raise ValueError(f"audit field {key!r} is not JSON-serialisable: {exc}") from exc
            _check_value(key, value)
        with self._locked(fcntl.LOCK_EX):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                last = self._appendable_tail(fd)
                record = {"seq": 0 if last is None else last["seq"] + 1,
                          "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                          "event": event, **fields, "prev": GENESIS if last is None else last["hash"]}
                record["hash"] = _digest(record)
                if self.key is not None:
                    record["mac"] = _mac(self.key, record["hash"])
                data = (_canonical(record) + "\n").encode("ascii")
                while data:  # os.write may write only part
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._write_head(record["seq"], record["hash"])
        return json.loads(_canonical(record))

    def _read_lines(self) -> tuple[list[bytes], bool]:
        """Lines of the log without newlines, and whether the last one lacked its newline."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], False
        lines = data.split(b"\n")
        torn = lines[-1] != b""
        if not torn:
            lines.pop()  # the empty string after the final newline
        return lines, torn

    def verify(self, *, min_records: int = 0, anchors: tuple[Anchor, ...] | list[Anchor] = ()) -> AuditReport:
        """Check every line, the chain, the head anchor, and what the world outside the log says must be in it.

        Args:
            min_records: How many records must exist at least (e.g. one per completed batch, known from the
                ledger). An absent or empty log is only ok when this is 0: a deleted log is not an intact one.
            anchors: ``(seq, hash)`` pairs quoted elsewhere (certificates); each must be a record of the chain.
                A re-hashed chain moves every hash after the first edit, so quoted anchors catch a forger who
                recomputed the chain without keyed mode.

        Returns:
            An :class:`AuditReport`. In keyed mode (``key`` given) every record and the head anchor must also
            carry a valid MAC.
        """
        problems: list[str] = []
        with self._locked(fcntl.LOCK_SH):
            lines, torn = self._read_lines()
            try:
                head, head_error = self._read_head(), None
            except AuditError as exc:
                head, head_error = None, str(exc)
        last: dict[str, Any] | None = None  # last parseable record, for the chain checks
        expect_link = True  # False right after a line we could not parse: the link cannot be checked
        by_seq: dict[int, str] = {}
        for n, raw in enumerate(lines, start=1):
            if torn and n == len(lines):
                problems.append(f"line {n}: incomplete last line without newline (torn write?)")
                break
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not _is_record(record):
                problems.append(f"line {n}: not a valid JSON record")
                expect_link = False
                continue
            if _digest(record) != record["hash"]:
                problems.append(f"line {n}: hash mismatch (record edited)")
            elif raw != _canonical(record).encode("ascii", "backslashreplace"):
                # The hash covers the parsed record; bytes that parse to it in another form (a repeated key that
                # another reader resolves differently, extra spaces) are not the record that was written.
                problems.append(f"line {n}: not in canonical form (rewritten after it was appended)")
            elif self.key is not None and not hmac.compare_digest(str(record.get("mac", "")),
                                                                  _mac(self.key, record["hash"])):
                problems.append(f"line {n}: MAC missing or wrong (record written or re-hashed without the key)")
            want_seq, want_prev = (0, GENESIS) if last is None else (last["seq"] + 1, last["hash"])
            if expect_link and record["seq"] != want_seq:
                kind = "out of order" if last is not None and record["seq"] <= last["seq"] else "gap, line removed?"
                problems.append(f"line {n}: seq {record['seq']} where {want_seq} was expected ({kind})")
            elif expect_link and record["prev"] != want_prev:
                problems.append(f"line {n}: prev does not match the hash of the line before (chain broken)")
            by_seq.setdefault(record["seq"], record["hash"])
            last, expect_link = record, True
        if head_error:
            problems.append(head_error)
        elif head is None and lines:
            problems.append(f"head anchor {self.head_path.name} missing (log has {len(lines)} lines); "
                            "truncation cannot be ruled out")
        elif head is not None and last is None:
            problems.append(f"log has no records but head anchor says seq {head['seq']} (log deleted or truncated)")
        elif head is not None and head["seq"] > last["seq"]:
            problems.append(f"head anchor says seq {head['seq']} but the last record is seq {last['seq']} "
                            f"(truncated after line {len(lines)})")
        elif head is not None and not _head_fits(head, last):
            problems.append(f"head anchor (seq {head['seq']}) does not match the tail of the log")
        head_mac = None if head is None or self.key is None else _mac(self.key, f"head:{head['seq']}:{head['hash']}")
        if head_mac is not None and not hmac.compare_digest(str(head.get("mac", "")), head_mac):
            problems.append("head anchor MAC missing or wrong (anchor rewritten without the key)")
        count = len(by_seq)
        if count < min_records:
            where = "missing" if not self.path.exists() else f"holds {count} record(s)"
            problems.append(f"the log {where}, but at least {min_records} record(s) must exist "
                            "(work was done that the log should record: deleted or truncated?)")
        for anchor in anchors:
            found = by_seq.get(anchor.seq)
            if found is None:
                problems.append(f"{anchor.source}: quotes record seq {anchor.seq}, which is not in the log")
            elif found != anchor.hash:
                problems.append(f"{anchor.source}: quotes seq {anchor.seq} with hash {anchor.hash[:12]}..., "
                                f"the log has {found[:12]}... (history rewritten after it was quoted)")
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        return AuditReport(ok=not problems, lines=len(lines), head_seq=None if last is None else last["seq"],
                           head_hash=None if last is None else last["hash"], problems=tuple(problems),
                           keyed=self.key is not None)

    def records(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Parsed records in file order, optionally filtered; unparseable lines are skipped (see verify).

        Args:
            event: Keep only records with this event name.
            **match: Keep only records whose field equals each given value.

        Returns:
            The matching records.
        """
        with self._locked(fcntl.LOCK_SH):
            lines, torn = self._read_lines()
        out = []
        for raw in lines[:-1] if torn else lines:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(record, dict) or (event is not None and record.get("event") != event):
                continue
            if all(k in record and record[k] == v for k, v in match.items()):
                out.append(record)
        return out
