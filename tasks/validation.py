"""Great Expectations validation of deletion requests.

Rows are flattened into two frames: one row per request, and one row per (request, sample id).
Each expectation carries a machine-readable rejection code in its ``meta``; a request is valid
only if no expectation flags it, and every flagged request gets every code that applies, with
a one-line human-readable detail per code. Two exceptions keep the codes meaningful: a row that
is not a request object at all (or a ragged CSV row) gets only that structural code, and the
sample ids of a request are checked one by one only when the request names between 1 and
``max_ids`` of them as a list of strings (which also bounds the work a hostile file can cause).

Whether a valid request is accepted, acknowledged (a repeat, or samples already deleted) or
rejected as a conflicting reuse of its id depends on the ledger, not on the request alone:
:class:`unlearn.requests.RequestRouter` decides that after validation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from unlearn.requests import FIELDS, NOT_AN_OBJECT, RAGGED_ROW, RawRequest

# \Z, not $: "$" also matches before a trailing newline, which would let "id\n" through.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z"
SAMPLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
# ASCII digits only: \d would also accept Arabic-Indic and other Unicode digits.
# A zone offset only after a time: Python reads "2026-12-07+12:00" as noon, no zone (the "+" taken for the date and
# time separator), so a date with an offset moved a request by up to a day (review of 2026-12-07).
ISO_8601 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?\Z"
EARLIEST_RECEIVED = datetime(2000, 1, 1, tzinfo=UTC)  # before any deletion law this pipeline serves
_SURROGATE = re.compile("[\ud800-\udfff]")
STRUCTURAL_CODES = ("not_a_request_object", "csv_row_wrong_column_count")
MAX_SUBJECT_REF = 512

_TEXT = {
    "not_a_request_object": "the row is not a JSON object",
    "csv_row_wrong_column_count": "the CSV row has more or fewer cells than the header",
    "unknown_field": "{fields} not in the schema (allowed: " + ", ".join(FIELDS) + ")",
    "need_exactly_one_of_sample_ids_or_forget_class": "a request names sample_ids or forget_class, not both or neither",
    "unknown_class": "forget_class is not a class of the dataset ({classes})",
    "request_id_missing_or_not_string": "request_id is missing or not a string",
    "request_id_malformed": "request_id must be 1-128 letters, digits and . _ : - starting with a letter or digit",
    "sample_ids_not_list_of_strings": "sample_ids must be a list of strings",
    "sample_ids_count_out_of_range": "names {n_ids} sample ids; a request names 1 to {max_ids}",
    "received_at_missing_or_not_string": "received_at is missing or not a string",
    "received_at_not_iso8601": "received_at is not an ISO-8601 date or time",
    "received_at_in_future": "received_at is more than {max_skew} s ahead of the pipeline's clock",
    "received_at_not_a_time": "received_at has the ISO-8601 form but is no valid date or time (month 13, offset 99:99, ...)",
    "received_at_too_old": "received_at is before 2000-01-01",
    "reason_missing_or_not_string": "reason is missing or not a string",
    "reason_not_allowed": "reason must be one of {reasons}",
    "subject_ref_missing_or_not_string": "subject_ref is missing or not a string",
    "subject_ref_bad_length": f"subject_ref must be 1 to {MAX_SUBJECT_REF} characters",
    "sample_id_malformed": "{count} sample id(s) are not 1-128 letters, digits and . _ - starting with a letter or digit",
    "unknown_sample_id": "{count} sample id(s) are not in the dataset",
    "duplicate_sample_id_in_request": "{count} entries repeat a sample id named more than once",
}


@dataclass(frozen=True)
class Verdict:
    """Validation outcome of one request.

    Attributes:
        request: The row.
        reasons: Rejection codes, sorted (empty when valid).
        detail: One human-readable sentence per code, ``"code: text; ..."``. It never quotes a
            sample id or a subject reference.
    """

    request: RawRequest
    reasons: tuple[str, ...]
    detail: str = ""

    @property
    def valid(self) -> bool:
        return not self.reasons


def _frame_safe(text: str) -> str:
    """``text`` with each lone surrogate (valid in JSON, not in UTF-8) replaced one for one by
    U+FFFD: pandas' Arrow-backed strings cannot hold one, and the length stays the same."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _string_or_none(value: Any) -> str | None:
    return _frame_safe(value) if isinstance(value, str) else None


def _id_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _context():
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX announces its temporary docs directory at INFO on every context; keep the terminal clean.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _failed_indices(batch_definition, frame, expectations) -> dict[str, list[int]]:
    """Code -> positions (in ``frame``) of the rows its expectation flags."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="suite", expectations=expectations)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format="COMPLETE"
    )
    failed: dict[str, list[int]] = {}
    for item in result.results:
        if item.success:
            continue
        code = item.expectation_config.meta["code"]
        indices = item.result.get("unexpected_index_list")
        if indices is None:  # a table-level expectation: flags every row
            indices = list(range(len(frame)))
        failed.setdefault(code, []).extend(int(i) for i in indices)
    return failed


def _class_name(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return _frame_safe(str(value))
    return None


def _field_names(names: tuple[str, ...]) -> str:
    """Unknown field names for a detail: only near-misses of the schema's own names (a typo an operator can fix),
    otherwise a count. A key may be anything, a customer id included (``{"cust_88123_jdoe": {...}}``, a common
    export shape); plain identifiers were copied into the rejection log (review of 2026-12-07)."""
    shown = [n for n in names if isinstance(n, str) and _near_schema_name(n)][:10]
    rest = len(names) - len(shown)
    return ", ".join(shown + ([f"{rest} other field(s)"] if rest else []))


def _near_schema_name(name: str) -> str | None:
    """The schema field ``name`` is a near-miss of (case, separators, one or two typos), else None."""
    import difflib

    from unlearn.requests.parsing import FIELDS

    if not re.fullmatch(r"[A-Za-z0-9_ -]{1,40}", name):
        return None
    folded = re.sub(r"[ -]", "_", name.strip().lower())
    match = difflib.get_close_matches(folded, FIELDS, n=1, cutoff=0.8)
    return match[0] if match else None


def _received_status(value: Any, horizon: datetime) -> str | None:
    """``ok``, ``future`` (after ``horizon``), ``too_old``, ``invalid`` (ISO-8601 form, no real time), or None when
    it does not even have the form (the regex check reports that)."""
    if not isinstance(value, str) or not re.match(ISO_8601, value):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return "invalid"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        if parsed > horizon:
            return "future"
        return "too_old" if parsed < EARLIEST_RECEIVED else "ok"
    except OverflowError:  # an offset that pushes year 1 or 9999 out of range
        return "invalid"


def precheck_request(
    request: RawRequest,
    *,
    known_ids: set[str] | frozenset[str],
    classes: tuple[str, ...] = (),
    reasons: tuple[str, ...],
    max_ids: int,
    max_clock_skew_seconds: float = 300.0,
    now: datetime | None = None,
) -> Verdict:
    """The checks of :func:`validate_requests`, on one request, in plain Python (no Great Expectations).

    Why: ``unlearn request submit`` refuses a bad request before queueing it, and it sits on the served
    pipeline's latency path (submit -> decided, issue #12): importing Great Expectations and loading
    the dataset cost it 5 s, twenty times the command's own time. Ingestion still decides with
    Great Expectations; ``tests/pipeline/test_ingest.py`` checks that the two agree code for code.
    """
    v = request.values
    codes: set[str] = set()
    counts: Counter[str] = Counter()
    if NOT_AN_OBJECT in v or RAGGED_ROW in v:
        codes.add("not_a_request_object" if NOT_AN_OBJECT in v else "csv_row_wrong_column_count")
    if request.extra_fields:
        codes.add("unknown_field")
    has_ids, has_class = "sample_ids" in v, "forget_class" in v
    mode = "samples" if has_ids and not has_class else "class" if has_class and not has_ids else "invalid"
    if mode == "invalid":
        codes.add("need_exactly_one_of_sample_ids_or_forget_class")
    if mode == "class" and _class_name(v.get("forget_class")) not in classes:
        codes.add("unknown_class")
    request_id = _string_or_none(v.get("request_id"))
    if request_id is None:
        codes.add("request_id_missing_or_not_string")
    elif not re.match(REQUEST_ID_PATTERN, request_id):
        codes.add("request_id_malformed")
    n_ids = None
    if mode == "samples":
        ids = _id_list(v.get("sample_ids"))
        if ids is None:
            codes.add("sample_ids_not_list_of_strings")
        elif not 1 <= len(ids) <= max_ids:
            codes.add("sample_ids_count_out_of_range")
            n_ids = len(ids)
        else:
            n_ids = len(ids)
            safe = [_frame_safe(i) for i in ids]
            malformed = [i for i in safe if not re.match(SAMPLE_ID_PATTERN, i)]
            unknown = [i for i in safe if i not in known_ids and re.match(SAMPLE_ID_PATTERN, i)]
            repeats = Counter(safe)
            duplicated = sum(n for n in repeats.values() if n > 1)
            for code, count in (("sample_id_malformed", len(malformed)), ("unknown_sample_id", len(unknown)),
                                ("duplicate_sample_id_in_request", duplicated)):
                if count:
                    codes.add(code)
                    counts[code] = count
    received = _string_or_none(v.get("received_at"))
    horizon = (now or datetime.now(UTC)) + timedelta(seconds=max_clock_skew_seconds)
    if received is None:
        codes.add("received_at_missing_or_not_string")
    elif not re.match(ISO_8601, received):
        codes.add("received_at_not_iso8601")
    else:
        status = _received_status(v.get("received_at"), horizon)
        code = {"future": "received_at_in_future", "invalid": "received_at_not_a_time",
                "too_old": "received_at_too_old"}.get(status)
        if code:
            codes.add(code)
    reason = _string_or_none(v.get("reason"))
    if reason is None:
        codes.add("reason_missing_or_not_string")
    elif reason not in reasons:
        codes.add("reason_not_allowed")
    subject = _string_or_none(v.get("subject_ref"))
    if subject is None:
        codes.add("subject_ref_missing_or_not_string")
    elif not 1 <= len(subject) <= MAX_SUBJECT_REF:
        codes.add("subject_ref_bad_length")
    found = codes & set(STRUCTURAL_CODES) or codes
    reasons_i = tuple(sorted(found))
    context_i = {"max_skew": f"{max_clock_skew_seconds:g}", "fields": _field_names(request.extra_fields),
                 "classes": ", ".join(classes[:20]), "n_ids": n_ids, "max_ids": max_ids, "reasons": ", ".join(reasons)}
    detail = "; ".join(f"{code}: " + _TEXT[code].format(count=counts.get(code, 0), **context_i) for code in reasons_i)
    return Verdict(request, reasons_i, detail)


def validate_requests(
    requests: list[RawRequest],
    *,
    known_ids: set[str],
    classes: tuple[str, ...] = (),
    reasons: tuple[str, ...],
    max_ids: int,
    max_clock_skew_seconds: float = 300.0,
    now: datetime | None = None,
) -> list[Verdict]:
    """Validate requests against the schema and the dataset.

    Args:
        requests: Parsed rows, in arrival order.
        known_ids: Every sample id of the source dataset.
        classes: Class names of the dataset (a ``forget_class`` must be one of them).
        reasons: Allowed values of ``reason``.
        max_ids: Most sample ids one request may name.
        max_clock_skew_seconds: How far ahead of ``now`` a ``received_at`` may be (the requester's clock may run
            a little fast; a date in the future beyond that is refused, it would falsify the deletion SLA).
        now: The pipeline's clock (UTC); the current time when None.

    Returns:
        One verdict per request, in the same order.
    """
    import great_expectations.expectations as gxe
    import numpy as np
    import pandas as pd

    if not requests:
        return []
    if not isinstance(known_ids, set | frozenset):
        known_ids = set(known_ids)  # membership is looked up per named id
    context = _context()
    horizon = (now or datetime.now(UTC)) + timedelta(seconds=max_clock_skew_seconds)
    rows = []
    checked_ids: list[list[str]] = []  # per request: the ids to check one by one (maybe none)
    for i, request in enumerate(requests):
        v = request.values
        ids = _id_list(v.get("sample_ids"))
        has_ids, has_class = "sample_ids" in v, "forget_class" in v
        mode = "samples" if has_ids and not has_class else "class" if has_class and not has_ids else "invalid"
        n_ids = (len(ids) if ids is not None else -1) if mode == "samples" else None
        checked_ids.append(ids if n_ids is not None and 1 <= n_ids <= max_ids else [])
        rows.append({
            "row": i,
            "is_object": NOT_AN_OBJECT not in v,
            "is_whole_row": RAGGED_ROW not in v,
            "request_id": _string_or_none(v.get("request_id")),
            "mode": mode,
            # n_ids is None (skipped by the checks) unless the request names samples.
            "n_ids": n_ids,
            "forget_class": _class_name(v.get("forget_class")) if mode == "class" else None,
            "received_at": _string_or_none(v.get("received_at")),
            "received_status": _received_status(v.get("received_at"), horizon),
            "reason": _string_or_none(v.get("reason")),
            "subject_ref": _string_or_none(v.get("subject_ref")),
            # Never "" when there is an unknown field, even one named "" (",".join(("",)) is "").
            "unknown_fields": _frame_safe("," + ",".join(map(str, request.extra_fields))) if request.extra_fields
            else "",
        })
    frame = pd.DataFrame(rows)  # default RangeIndex: index == position in `requests`
    frame["n_ids"] = frame["n_ids"].astype("Int64")
    class_rows = frame["mode"] == "class"
    frame["class_ok"] = None
    frame.loc[class_rows, "class_ok"] = frame.loc[class_rows, "forget_class"].isin(list(classes))
    for column in ("request_id", "received_at", "received_status", "reason", "subject_ref", "forget_class",
                   "class_ok"):
        frame[column] = frame[column].astype(object)
    requests_def = (context.data_sources.add_pandas(name="requests")
                    .add_dataframe_asset(name="rows").add_batch_definition_whole_dataframe("all"))
    request_checks = [
        gxe.ExpectColumnValuesToBeInSet(column="is_object", value_set=[True], meta={"code": "not_a_request_object"}),
        gxe.ExpectColumnValuesToBeInSet(column="is_whole_row", value_set=[True], meta={"code": "csv_row_wrong_column_count"}),
        gxe.ExpectColumnValuesToBeInSet(column="unknown_fields", value_set=[""], meta={"code": "unknown_field"}),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["samples", "class"], meta={"code": "need_exactly_one_of_sample_ids_or_forget_class"}),
        gxe.ExpectColumnValuesToBeInSet(column="class_ok", value_set=[True], meta={"code": "unknown_class"}),
        gxe.ExpectColumnValuesToNotBeNull(column="request_id", meta={"code": "request_id_missing_or_not_string"}),
        gxe.ExpectColumnValuesToMatchRegex(column="request_id", regex=REQUEST_ID_PATTERN, meta={"code": "request_id_malformed"}),
        # n_ids is -1 when sample_ids is not a list of strings; otherwise it must be 1..max_ids.
        gxe.ExpectColumnValuesToNotBeInSet(column="n_ids", value_set=[-1], meta={"code": "sample_ids_not_list_of_strings"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_ids", min_value=1, max_value=max_ids, row_condition="n_ids!=-1", condition_parser="pandas", meta={"code": "sample_ids_count_out_of_range"}),
        gxe.ExpectColumnValuesToNotBeNull(column="received_at", meta={"code": "received_at_missing_or_not_string"}),
        gxe.ExpectColumnValuesToMatchRegex(column="received_at", regex=ISO_8601, meta={"code": "received_at_not_iso8601"}),
        gxe.ExpectColumnValuesToNotBeInSet(column="received_status", value_set=["future"], meta={"code": "received_at_in_future"}),
        gxe.ExpectColumnValuesToNotBeInSet(column="received_status", value_set=["invalid"], meta={"code": "received_at_not_a_time"}),
        gxe.ExpectColumnValuesToNotBeInSet(column="received_status", value_set=["too_old"], meta={"code": "received_at_too_old"}),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", meta={"code": "reason_missing_or_not_string"}),
        gxe.ExpectColumnValuesToBeInSet(column="reason", value_set=list(reasons), meta={"code": "reason_not_allowed"}),
        gxe.ExpectColumnValuesToNotBeNull(column="subject_ref", meta={"code": "subject_ref_missing_or_not_string"}),
        gxe.ExpectColumnValueLengthsToBeBetween(column="subject_ref", min_value=1, max_value=MAX_SUBJECT_REF, meta={"code": "subject_ref_bad_length"}),
    ]
    codes: list[set[str]] = [set() for _ in requests]
    for code, indices in _failed_indices(requests_def, frame, request_checks).items():
        for index in indices:
            codes[index].add(code)
    id_counts: list[Counter[str]] = [Counter() for _ in requests]  # per request: code -> flagged ids
    owners = np.repeat(np.arange(len(requests)), [len(ids) for ids in checked_ids])
    if len(owners):
        ids_frame = pd.DataFrame({"row": owners, "sample_id": [_frame_safe(s) for ids in checked_ids for s in ids]})
        ids_frame["pair"] = ids_frame["row"].astype(str) + "|" + ids_frame["sample_id"]
        # Membership is looked up here, one set lookup per named id, and the expectation checks the
        # flag. Given the dataset's ids as its value_set, GX copied that list through pydantic on every
        # metric it resolved: 6.4 s per request against Fashion-MNIST's 70,000 ids, 0.3 s against
        # digits' (benchmarks/orchestration/ingest_validation.py); pandas' isin would convert the set.
        # An array, assigned by position (never aligned on an index, where a NaN would pass the check).
        ids_frame["known"] = np.array([s in known_ids for s in ids_frame["sample_id"].tolist()], dtype=object)
        ids_def = (context.data_sources.add_pandas(name="sample_ids")
                   .add_dataframe_asset(name="ids").add_batch_definition_whole_dataframe("all"))
        id_checks = [
            gxe.ExpectColumnValuesToMatchRegex(column="sample_id", regex=SAMPLE_ID_PATTERN, meta={"code": "sample_id_malformed"}),
            gxe.ExpectColumnValuesToBeInSet(column="known", value_set=[True], meta={"code": "unknown_sample_id"}),
            gxe.ExpectColumnValuesToBeUnique(column="pair", meta={"code": "duplicate_sample_id_in_request"}),
        ]
        failed_ids = _failed_indices(ids_def, ids_frame, id_checks)
        if "sample_id_malformed" in failed_ids and "unknown_sample_id" in failed_ids:
            malformed = set(failed_ids["sample_id_malformed"])  # a malformed id is not also reported unknown
            failed_ids["unknown_sample_id"] = [i for i in failed_ids["unknown_sample_id"] if i not in malformed]
        for code, indices in failed_ids.items():
            if not indices:
                continue
            # Vectorised: a 100k-id request may flag every id, and .loc per id costs seconds.
            flagged_rows, counts = np.unique(owners[np.asarray(indices, dtype=np.int64)], return_counts=True)
            for row, count in zip(flagged_rows.tolist(), counts.tolist(), strict=True):
                codes[row].add(code)
                id_counts[row][code] = count
    verdicts = []
    for i, request in enumerate(requests):
        found = codes[i] & set(STRUCTURAL_CODES) or codes[i]  # a non-row has no fields to judge
        reasons_i = tuple(sorted(found))
        context_i = {"max_skew": f"{max_clock_skew_seconds:g}", "fields": _field_names(request.extra_fields), "classes": ", ".join(classes[:20]),
                     "n_ids": rows[i]["n_ids"], "max_ids": max_ids, "reasons": ", ".join(reasons)}
        detail = "; ".join(
            f"{code}: " + _TEXT[code].format(count=id_counts[i].get(code, 0), **context_i) for code in reasons_i
        )
        verdicts.append(Verdict(request, reasons_i, detail))
    return verdicts


def loggable_request_id(value: Any) -> str | None:
    """A request id as it may appear in a log: only a well-formed one (a rejected row's id may
    be megabytes long, hold control characters, or not be a string at all)."""
    return value if isinstance(value, str) and re.match(REQUEST_ID_PATTERN, value) else None
