"""Digests of requests, subjects and sample sets: what is stored instead of the identifying values.

Subject references identify people, so they are never stored: :func:`hash_subject` keeps a
salted HMAC-SHA256 instead. Sample-id sets are logged only as a salted digest (:func:`hash_ids`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


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


def request_digest(values: Mapping[str, Any]) -> str:
    """:func:`content_digest` of a request's fields: its ``forget_class`` (as text) if it names one, else its
    ``sample_ids``. One definition for ingestion and for ``unlearn request submit``'s early id check.

    Raises:
        KeyError, TypeError, ValueError: Fields that name neither (a request that failed validation).
    """
    if "forget_class" in values:
        return content_digest(forget_class=str(values["forget_class"]))
    return content_digest(sample_ids=values["sample_ids"])


class SaltError(ValueError):
    """The project's hashing salt is damaged (a command exits 2 naming the file)."""


def load_or_create_salt(path: Path) -> bytes:
    """Read the project's hashing salt, creating a random one on first use (mode 0600).

    Created complete, then linked into place: two processes creating it at once (a submit beside a run's
    ingest) both end with the one that was linked first, and neither can read a file still being written
    (an empty salt would have made every hash keyless). A salt file that is not 32 hex-encoded bytes is an
    error, never a key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_bytes(32).hex())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if another process linked its salt first: then that one is the salt
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        salt = bytes.fromhex(path.read_text().strip())
    except ValueError:
        salt = b""
    if len(salt) != 32:
        raise SaltError(f"hashing salt {path} is not 32 hex-encoded bytes: restore it from a backup (hashes "
                         "made with another salt no longer match)")
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


SUBMITTED_NAME = r"request-\d{8}T\d{6,12}-[0-9a-f]{12}\.json"  # what `unlearn request submit` names its files


def recorded_file_name(file_name: str, salt: bytes) -> str:
    """An inbox file's name as logs, events and records may keep it: names ``request submit`` wrote (a time stamp
    and a salted hash of the request id) unchanged, any other a salted hash of it.

    Why: a dropped file's name is chosen by whoever dropped it (``alice@example.com-erase-me.csv``), so it may be
    personal data; an unsalted hash of it could be confirmed by hashing guesses. Domain-separated from subject
    hashes. The rejection log also keeps a rejected file's size and content digest, which identify it to an
    operator who has it.
    """
    import re

    if re.fullmatch(SUBMITTED_NAME, file_name):
        return file_name
    digest = hash_subject(f"dropped-file-name\x00{file_name}", salt).removeprefix("hmac-sha256:")[:16]
    return f"hmac:{digest}"
