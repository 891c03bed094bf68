"""The deletion SLA of a certificate: how long each step of a request's timeline took.

Split out of :mod:`tasks.certificate` so that the JSON document and the HTML report
(:mod:`tasks.certificate_html`) share it without importing each other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())  # 3.11 accepts "Z" and fractional seconds
        except ValueError:
            return None
    else:
        return None
    # a naive timestamp is taken as UTC, the only clock the pipeline writes
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)  # microsecond resolution, without float noise


def sla_durations(timeline: list[dict]) -> list[dict]:
    """Durations between the steps of a request's timeline.

    A step whose time is None (it did not happen) or unparseable gets no durations, and the next step that did
    happen is measured from the last one that did, so a skipped step never hides elapsed time. Negative values
    are kept as they are: they reveal a clock or ordering problem an auditor should see.

    The deletion clock starts at the *later* of "received" (the requester's own claim, which the pipeline cannot
    check beyond refusing times in the future) and "validated" (when the pipeline ingested it): a requester's
    early date cannot make the pipeline look slow, and a late one cannot make it look fast.

    Args:
        timeline: Items ``{"step": str, "at": ISO-8601 string or None}`` in order, normally starting with
            "received". Timestamps may carry "Z" or an offset, with or without microseconds; naive ones are UTC.

    Returns:
        One dict per item, in order: ``{"step", "at", "seconds_since_previous", "seconds_since_received",
        "seconds_since_start"}``, the durations being floats in seconds or None where unknown.
    """
    items = [item if isinstance(item, dict) else {} for item in (timeline if isinstance(timeline, list) else [])]
    # found by name, not position, so a timeline that lost or reordered its first item still measures from it
    received = next((_parse_time(item.get("at")) for item in items if item.get("step") == "received"), None)
    start = sla_start(timeline)["at"]
    start_at = _parse_time(start) if start is not None else None
    rows, previous = [], None
    for item in items:
        at = _parse_time(item.get("at"))
        rows.append({"step": item.get("step"), "at": item.get("at"),
                     "seconds_since_previous": _seconds(previous, at),
                     "seconds_since_received": _seconds(received, at),
                     "seconds_since_start": _seconds(start_at, at)})
        previous = at if at is not None else previous
    return rows


def sla_start(timeline: list[dict]) -> dict[str, Any]:
    """Where the deletion clock starts: ``{"basis": "received" | "validated" | None, "at": str | None}``."""
    items = [item for item in (timeline if isinstance(timeline, list) else []) if isinstance(item, dict)]
    candidates = [(at, item.get("step"), item.get("at")) for item in items
                  if item.get("step") in ("received", "validated") and (at := _parse_time(item.get("at")))]
    if not candidates:
        return {"basis": None, "at": None}
    _, basis, text = max(candidates, key=lambda c: (c[0], c[1] == "validated"))
    return {"basis": basis, "at": text}
