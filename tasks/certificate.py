"""Per-request deletion certificates: a digest-sealed JSON document and a self-contained HTML report.

The JSON is the machine-readable record of what happened to one deletion request; the HTML
(:mod:`tasks.certificate_html`) renders the same content for privacy engineers and auditors, and the SLA
timeline (:mod:`tasks.certificate_sla`) is shared by both.

The digest makes edits detectable, not impossible: anyone can recompute a sha256. What makes the record
authoritative is the audit log, whose head (sequence number and hash) the certificate quotes and which
``unlearn audit verify`` checks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.certificate_html import render_html
from tasks.certificate_sla import sla_durations
from unlearn.files import write_bytes_atomic

DIGEST_PREFIX = "sha256:"
_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9_-]+")  # '.' is unsafe too: no '..', no hidden files
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_STEM_MAX = 64
_STEM_HASH_CHARS = 12


# --- the JSON document --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars unwrapped, datetimes as ISO text, non-finite floats as None."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # strict JSON has no NaN; jq and browsers reject it
    if isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if callable(getattr(value, "tolist", None)):  # numpy scalars and arrays
        return _plain(value.tolist())
    raise TypeError(f"certificate value of type {type(value).__name__} cannot be written as JSON")


def _canonical(document: dict[str, Any]) -> bytes:
    # the same canonical form as the audit log: sorted keys, no whitespace, ASCII, strict JSON
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def certificate_digest(document: dict[str, Any]) -> str:
    """Digest of a certificate document: sha256 over the canonical JSON of every field but "digest".

    Args:
        document: The certificate as written (with "sla"), with or without its "digest".

    Returns:
        ``"sha256:<hex>"``.
    """
    return DIGEST_PREFIX + hashlib.sha256(_canonical({k: v for k, v in document.items() if k != "digest"})).hexdigest()


def verify_certificate_digest(path: Path) -> bool:
    """Check that a certificate JSON file is unchanged since it was written.

    Args:
        path: A ``.json`` file written by :func:`write_certificate`.

    Returns:
        True when the file parses, its digest matches its content and its "sla" matches its timeline; False
        otherwise (edited, truncated, or not a certificate).
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:  # invalid JSON or invalid UTF-8
        return False
    if not isinstance(document, dict) or not isinstance(document.get("digest"), str):
        return False
    try:
        expected = certificate_digest(document)
    except ValueError:  # NaN or Infinity typed into the file
        return False
    if not hmac.compare_digest(document["digest"], expected):
        return False
    # a matching digest over an SLA that does not follow from the timeline means the writer was bypassed
    sla = sla_durations(document.get("timeline"))
    if document.get("sla") == sla:
        return True
    # certificates written before each row carried seconds_since_start (before 2026-12-04) are still theirs
    return document.get("sla") == [{k: v for k, v in row.items() if k != "seconds_since_start"} for row in sla]


def certificate_stem(request_id: str) -> str:
    """File stem for a request's certificate: readable, safe on every filesystem, unique per request id.

    Anything but letters, digits, '_' and '-' becomes '_' (so ':' , '/', '\\' and '..' cannot survive), the
    readable part is capped, and a short sha256 of the exact id is appended so that ids that sanitise alike
    ("a:b", "a_b") still get distinct files.

    Args:
        request_id: The request id.

    Returns:
        A stem matching ``[A-Za-z0-9][A-Za-z0-9_-]*``.

    Raises:
        ValueError: The request id is empty or not a string.
    """
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"a certificate needs a non-empty request id, got {request_id!r}")
    readable = _UNSAFE_STEM.sub("_", request_id)[:_STEM_MAX].strip("_-") or "request"
    suffix = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:_STEM_HASH_CHARS]
    return f"{readable}-{suffix}"


def html_matches(json_path: Path) -> bool:
    """Whether the HTML page beside a certificate's JSON is that document's: its footer shows the JSON's digest.

    The two files are replaced one after the other (the page first), so a write cut off between them leaves a new
    page beside the older JSON (or the reverse after an edit): the page then states what the recorded document does
    not (review of 2026-12-07). An interrupted ``certify`` issues both again on the next run.
    """
    try:
        digest = json.loads(Path(json_path).read_text()).get("digest")
        page = Path(json_path).with_suffix(".html").read_text(encoding="utf-8")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(digest, str) and f"Digest: <code>{digest}</code>" in page


def write_certificate(certificate: dict, plots: dict[str, Path], out_dir: Path) -> tuple[Path, Path]:
    """Write a request's deletion certificate as JSON and as a self-contained HTML report.

    Args:
        certificate: The certificate (see the module docstring of the pipeline for its schema); every key but
            "request_id" is optional. Any "sla" or "digest" in it is replaced.
        plots: Caption -> PNG file to embed in the verification section; a file that is missing or not a PNG
            is listed as not available.
        out_dir: Directory for the two files (created).

    Returns:
        ``(json_path, html_path)``, both ``<out_dir>/<certificate_stem(request_id)>.{json,html}``.

    Raises:
        ValueError: The certificate has no usable request id.
        TypeError: A value cannot be represented in JSON.
    """
    stem = certificate_stem(certificate.get("request_id"))
    if not _SAFE_STEM.fullmatch(stem):  # belt and braces: the stem is the only part of the path from outside
        raise ValueError(f"unsafe certificate file stem {stem!r}")
    document = _plain({key: value for key, value in certificate.items() if key not in ("sla", "digest")})
    document["sla"] = sla_durations(document.get("timeline"))
    document["digest"] = certificate_digest(document)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    page = render_html(document, plots or {}, json_path.name)
    # HTML first: a JSON on disk then implies its report is there too
    write_bytes_atomic(html_path, page.encode("utf-8"))
    write_bytes_atomic(json_path, (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    return json_path, html_path


