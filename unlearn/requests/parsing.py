"""Parsing request files: JSON or CSV in, one :class:`RawRequest` per row out, never an exception on bad content.

A request names the samples one person wants deleted (``sample_ids``), or a whole class to
forget (``forget_class``: every training sample of that class). Files arrive as JSON (one
object, a list of objects, or ``{"requests": [...]}``) or CSV (header ``request_id,sample_ids,
received_at,reason,subject_ref`` and optionally ``forget_class``; ``sample_ids`` separated by
``;`` or spaces), UTF-8 only. A file that cannot be read at all is reported as a
:class:`FileProblem`, and each row becomes a :class:`RawRequest` whose fields are validated
later (Great Expectations, in ``tasks/``). Files are read without following symbolic links, and
only regular files with a plain name are parsed.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("request_id", "sample_ids", "forget_class", "received_at", "reason", "subject_ref")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a request file larger than this is refused unparsed
# The most bytes of an inbox entry read and hashed: its recorded sha256 covers the whole file up to this size, and
# only the first HASH_CAP bytes of a larger one (refused as too large either way).
HASH_CAP = MAX_FILE_BYTES + 1
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
        refused_request_ids: For a file refused for its name only: the request ids its content holds (raw; the
            caller keeps the well-formed ones), so each requester can learn why their request was refused.
    """

    name: str
    requests: list[RawRequest] = field(default_factory=list)
    problem: FileProblem | None = None
    size: int | None = None
    sha256: str | None = None
    refused_request_ids: list[Any] = field(default_factory=list)



# Names upload tools give a file while they write it, renaming it into place when complete: ``.NAME.tmp`` (request
# submit), rsync's ``.NAME.XXXXXX``, WinSCP's ``NAME.filepart``, and ``.part``/``.partial`` downloads. Read (and
# refused as unsupported) mid-transfer, such a file was deleted under the tool, which then failed (review of
# 2026-12-07).
_PARTIAL_UPLOAD = re.compile(r"\.[^./][^/]*\.(tmp|[A-Za-z0-9]{6})|[^/]+\.(filepart|part|partial)")


_NAMED_SUFFIXES = frozenset({".txt", ".xlsx", ".xls", ".jsonl", ".ndjson", ".tsv", ".xml", ".yaml", ".yml", ".pdf",
                             ".doc", ".docx", ".zip", ".gz", ".tar", ".png", ".jpg", ".jpeg", ".bin", ".dat", ".md",
                             ".html", ".eml", ".msg", ".odt", ".ods", ".parquet", ".bak", ".old", ".tmp"})


def skipped_in_inbox(name: str) -> bool:
    """Whether the inbox scan leaves a file alone: the ``.gitkeep`` placeholder and files still
    being written under an upload tool's temporary name (:data:`_PARTIAL_UPLOAD`)."""
    return name == ".gitkeep" or _PARTIAL_UPLOAD.fullmatch(name) is not None



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
        # Read (and hash) at most HASH_CAP bytes: a file larger than that is refused after its first HASH_CAP bytes,
        # never read to the end. A sparse 4 GB file took 16 s to hash, every ingest and every `request submit`
        # (1 TB: hours under the pipeline's lock; review of 2026-12-07).
        digest = hashlib.sha256()
        chunks, size = [], 0
        cap = max(HASH_CAP, limit + 1)  # a caller's larger limit is read whole
        while size < cap and (chunk := handle.read(min(1 << 20, cap - size))):
            digest.update(chunk)
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            else:
                chunks = []  # too large: keep nothing
        on_disk = max(size, os.fstat(handle.fileno()).st_size)
    if size > limit or on_disk > limit:
        return _Read(None, on_disk, digest.hexdigest(), ("file_too_large", f"{on_disk} bytes > {limit}"))
    return _Read(b"".join(chunks), size, digest.hexdigest())



def file_sha256(path: Path) -> str | None:
    """The content hash :func:`parse_request_file` records for an inbox entry, read the same way: None for
    anything but a regular file (a link is never followed, a FIFO never blocks)."""
    return _read_regular_file(path, 0).sha256


def parse_request_file(path: Path, max_bytes: int = MAX_FILE_BYTES, max_rows: int | None = None) -> ParsedFile:
    """Read and parse one request file from the inbox.

    Args:
        path: The file. A symbolic link is never followed; anything but a regular file, or a
            name that is not plain (``..``, a leading dot, path or control characters), is a
            problem and its content is not parsed.
        max_bytes: Larger files are refused unparsed.
        max_rows: A file with more rows is refused (``too_many_rows``), found while parsing (see
            :func:`parse_request_bytes`).

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
        # The content is read for its request ids only (a name like "erase-me@alice.json" lost every request in
        # the file without a trace: `request status` said "unknown"; review of 2026-12-07). Nothing in it runs.
        inner = parse_request_bytes("refused" + Path(path.name).suffix.lower(), read.data, max_rows=max_rows)
        return ParsedFile(name, problem=problem, size=read.size, sha256=read.sha256,
                          refused_request_ids=[row.values.get("request_id") for row in inner.requests])
    parsed = parse_request_bytes(name, read.data, max_rows=max_rows)
    parsed.size, parsed.sha256 = read.size, read.sha256
    return parsed



def parse_request_bytes(name: str, data: bytes, max_rows: int | None = None) -> ParsedFile:
    """Parse a request file's content by the extension of ``name`` (``.json`` or ``.csv``).

    Args:
        name: The file's (sanitised) name.
        data: Its bytes.
        max_rows: Refuse the file (``too_many_rows``) once it has more rows: a CSV stops being read there, and a
            JSON list (or ``{"requests": [...]}``) is decoded row by row and stops there, so 64 MiB of ``{}`` or
            ``[]`` rows is not built in memory first (1.5-4 GB and a minute under the pipeline's lock; reviews of
            2026-12-07). Other JSON shapes (one request object, a wrapper with other keys) are decoded whole.

    Returns:
        The parsed rows, or a :class:`FileProblem` (unsupported type, empty, not UTF-8,
        malformed JSON/CSV, not a request document).
    """
    suffix = Path(name).suffix.lower()

    def problem(code: str, detail: str) -> ParsedFile:
        return ParsedFile(name, problem=FileProblem(name, code, detail))

    if suffix not in (".json", ".csv"):
        # only a common extension is named: a dropped file's name may be personal data (erase.janedoe1984), and
        # the rejection log keeps the name only as a salted hash (review of 2026-12-07)
        shown = suffix if suffix in _NAMED_SUFFIXES else "another extension" if suffix else "no extension"
        return problem("unsupported_file_type", f"expected .json or .csv, got {shown}")
    if not data.strip():
        return problem("empty_file", "the file is empty")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return problem("not_utf8", "UTF-16/32 byte-order mark: save the file as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return problem("not_utf8", f"not UTF-8 text: invalid byte at offset {exc.start}")
    too_many = (f"more than requests.max_rows_per_file ({max_rows}) rows: split the file"
                if max_rows is not None else "")
    if suffix == ".json":
        try:
            document = None if max_rows is None else _decode_rows(text, max_rows)
            if document is None:
                document = json.loads(text, object_pairs_hook=_unique_keys)
        except TooManyRows:
            return problem("too_many_rows", too_many)
        except DuplicateKeyError as exc:
            return problem("duplicate_json_key", str(exc))
        except RecursionError:  # the C decoder stops at the interpreter's recursion limit
            return problem("malformed_json", "nested too deeply")
        except json.JSONDecodeError as exc:  # its message names the position, never the content
            return problem("malformed_json", f"{exc.msg} (line {exc.lineno}, column {exc.colno})")
        except ValueError as exc:  # e.g. an integer literal too long to convert
            return problem("malformed_json", str(exc).split(";")[0][:200])
        if isinstance(document, dict) and "requests" in document:
            if len(document) > 1:  # a request beside the list would be dropped without a word
                return problem("not_a_request_file", 'a file with a "requests" list may hold no other top-level '
                               f"key (found {len(document) - 1} more)")
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
        header, rows_or_error = _read_csv(text, max_rows)
        if rows_or_error is None:
            return problem("too_many_rows", too_many)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:  # DictReader keeps the last of two same-named columns: the first one's data would vanish
            shown = ", ".join(n if n in FIELDS else "a column outside the schema" for n in repeated[:5])
            return problem("duplicate_csv_column", f"the header names a column more than once ({shown})")
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
    if max_rows is not None and len(rows) > max_rows:
        return problem("too_many_rows", too_many)
    return ParsedFile(name, requests=_rows_to_requests(name, rows))



class TooManyRows(ValueError):
    """A JSON list holds more rows than its file may have (decoding stops there)."""


_WRAPPER = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"requests"[ \t\n\r]*:[ \t\n\r]*\[')  # JSON's own whitespace only
_SPACE = re.compile(r"[ \t\n\r]*")


def _decode_rows(text: str, max_rows: int) -> Any:
    """A JSON list of rows (or ``{"requests": [...]}`` holding only it) decoded one row at a time, raising
    :class:`TooManyRows` at row ``max_rows + 1``; None when the document has another shape (decode it whole).
    Only top-level rows count: a row holding objects or lists is one row. Errors are the decoder's own
    (``JSONDecodeError`` with its position, ``DuplicateKeyError``, ``RecursionError``)."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    wrapper = _WRAPPER.match(text)
    if wrapper:
        i = wrapper.end()
    else:
        i = _SPACE.match(text).end()
        if not text.startswith("[", i):
            return None
        i += 1
    rows: list[Any] = []
    i = _SPACE.match(text, i).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            row, i = decoder.raw_decode(text, i)
            rows.append(row)
            if len(rows) > max_rows:
                raise TooManyRows(max_rows)
            i = _SPACE.match(text, i).end()
            if text.startswith(",", i):
                i = _SPACE.match(text, i + 1).end()
                continue
            if text.startswith("]", i):
                i += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    i = _SPACE.match(text, i).end()
    if wrapper:
        if not text.startswith("}", i):  # another key beside "requests": decoded whole (and refused there)
            return None
        i = _SPACE.match(text, i + 1).end()
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return {"requests": rows} if wrapper else rows


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



def _read_csv(text: str, max_rows: int | None = None) -> tuple[list[str], list[dict[str, Any]] | str | None]:
    """Header and rows of a CSV text, or an error message (never quoting the content), or None when it has more
    than ``max_rows`` rows (reading stops there)."""
    import itertools

    previous = csv.field_size_limit(MAX_FILE_BYTES)  # one request may name 100k ids in one cell
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = list(reader.fieldnames or [])
        rows = list(reader if max_rows is None else itertools.islice(reader, max_rows + 1))
        if max_rows is not None and len(rows) > max_rows:
            return header, None
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
