"""Atomic file writes and the UTC clock: the one way every layer writes a file and stamps a time.

A reader (a later stage, ``dvc``, a crash-recovery re-run) must never see half a file: each
writer here writes a temporary file in the target's directory and renames it over the target
(``os.replace`` is atomic on one file system). The file's data is flushed to the disk before the rename and
the rename itself after it (``fsync`` of the file, then of the directory), as the audit log's writes are: after a
power loss a ledger that says a certificate was issued must not sit beside an empty or older certificate
file (review of 2026-12-07; about 0.3 ms a write here). Temporary names are unique per call, start with
a dot and end in ``.tmp`` (``.NAME.XXXX.tmp``), so concurrent writers never share one and the
request inbox skips a file still being written (:func:`unlearn.requests.skipped_in_inbox`).
Writers that pick a format from the suffix (``numpy.savez``, ``matplotlib``) get an open file or
an explicit format.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when the block succeeds.

    The parent directory is created. If the block raises, the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: The file to (re)write.

    Yields:
        The temporary path (in the same directory).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are mode 0600, and the target keeps the temporary file's mode.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync(path.parent)  # the rename
    except OSError as exc:
        # The file is replaced: a folder this process may write but not open, or a file system that cannot sync a
        # folder, must not turn a finished write into a reported failure (the rename is then as durable as the
        # file system makes it). An I/O error is still raised: the rename may not survive.
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk (a read-only descriptor is enough on POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, document: Any) -> None:
    """Write JSON (indented, sorted keys: diffs stay small) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: str | Path, lines: list[dict[str, Any]]) -> None:
    """Write one JSON object per line to ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))


def utc_now(*, precise: bool = False) -> str:
    """The current UTC time as ISO-8601 with a ``Z``: to the second, or to the microsecond when ``precise``.

    Lifecycle steps use ``precise`` (two steps of one run may fall in the same second and
    their order is the deletion's timeline); everything else is stamped to the second.
    """
    return utc_timestamp(datetime.now(UTC), precise=precise)


def utc_timestamp(moment: datetime, *, precise: bool = False) -> str:
    """``moment`` (timezone-aware) in the format of :func:`utc_now`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if precise else "%Y-%m-%dT%H:%M:%SZ")
