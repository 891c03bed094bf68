"""Cron expressions as the schedules in ``params.yaml`` write them, checked field by field."""

from __future__ import annotations

import re

# Cron fields: (name, lowest, highest, names). Day of week 7 is Sunday, as in Vixie cron and Prefect's croniter.
_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
                ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
                ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))
_CRON_ITEM = re.compile(r"(?:\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")


def cron_problem(expression: str) -> str | None:
    """Why a cron expression cannot fire as meant, or None: Prefect would refuse it only when ``unlearn serve``
    starts.

    Five fields of ``*``, values, names, ranges (a range may wrap: ``sat-sun``, ``dec-jan``), steps and lists
    (``0 2 * * 1-5``, ``*/15 * * * *``, ``0 3 1 jan,jul *``), each value within its field's range. Items using
    the extensions Prefect's cron also reads (``?``, ``L``, ``W``, ``#``) are left for it to judge.
    """
    fields = expression.split()
    if len(fields) != 5:
        return f"expected a 5-field cron expression such as '0 2 * * *', got {expression!r}"
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            if any(mark in item.upper() for mark in "?LW#"):
                continue
            match = _CRON_ITEM.fullmatch(item.lower())
            values = [] if match is None else [v for v in match.group(1, 2) if v is not None]
            numbers = [names.index(v) + (low if names else 0) if v in names
                       else int(v) if v.isascii() and v.isdigit() else None for v in values]
            step = None if match is None else match.group(3)
            if (match is None or None in numbers or any(not low <= n <= high for n in numbers)
                    or (step is not None and int(step) < 1)):
                return f"{item!r} is not a valid {name} ({low}-{high}) in {expression!r}"
    return None
