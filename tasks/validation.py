"""Great Expectations validation of deletion requests.

Rows are flattened into two frames: one row per request, and one row per (request, sample id).
Each expectation carries a machine-readable rejection code in its ``meta``; a request is valid
only if no expectation flags it, and every flagged request gets every code that applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlearn.requests import RawRequest

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SAMPLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ISO_8601 = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"


@dataclass(frozen=True)
class Verdict:
    """Validation outcome of one request."""

    request: RawRequest
    reasons: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.reasons


def _string_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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


def _failed_rows(batch_definition, frame, expectations) -> dict[int, list[str]]:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="suite", expectations=expectations)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format="COMPLETE"
    )
    failed: dict[int, list[str]] = {}
    for item in result.results:
        if item.success:
            continue
        code = item.expectation_config.meta["code"]
        indices = item.result.get("unexpected_index_list")
        if indices is None:  # a table-level expectation: flags every row
            indices = list(frame.index)
        for index in indices:
            failed.setdefault(int(index), []).append(code)
    return failed


def _class_name(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return str(value)
    return None


def validate_requests(
    requests: list[RawRequest],
    *,
    known_ids: set[str],
    classes: tuple[str, ...] = (),
    deleted_ids: set[str],
    seen_request_ids: set[str],
    reasons: tuple[str, ...],
    max_ids: int,
) -> list[Verdict]:
    """Validate requests against the schema and the current data version.

    Args:
        requests: Parsed rows, in arrival order.
        known_ids: Every sample id of the source dataset.
        deleted_ids: Ids already deleted by earlier batches.
        seen_request_ids: Request ids accepted earlier (a repeat is a duplicate).
        classes: Class names of the dataset (a ``forget_class`` must be one of them).
        reasons: Allowed values of ``reason``.
        max_ids: Most sample ids one request may name.

    Returns:
        One verdict per request, in the same order.
    """
    import great_expectations.expectations as gxe
    import pandas as pd

    if not requests:
        return []
    context = _context()
    rows = []
    counts: dict[str, int] = {}
    for i, request in enumerate(requests):
        v = request.values
        request_id = _string_or_none(v.get("request_id"))
        ids = _id_list(v.get("sample_ids"))
        has_ids, has_class = "sample_ids" in v, "forget_class" in v
        mode = "samples" if has_ids and not has_class else "class" if has_class and not has_ids else "invalid"
        occurrence = counts.get(request_id, 0) if request_id is not None else 0
        if request_id is not None:
            counts[request_id] = occurrence + 1
        rows.append({
            "row": i,
            "is_object": "__not_an_object__" not in v and "__ragged__" not in v,
            "request_id": request_id,
            "occurrence": occurrence,
            "mode": mode,
            # n_ids is None (skipped by the checks) unless the request names samples.
            "n_ids": (len(ids) if ids is not None else -1) if mode == "samples" else None,
            "forget_class": _class_name(v.get("forget_class")) if mode == "class" else None,
            "received_at": _string_or_none(v.get("received_at")),
            "reason": _string_or_none(v.get("reason")),
            "subject_ref": _string_or_none(v.get("subject_ref")),
            "unknown_fields": ",".join(request.extra_fields),
        })
    frame = pd.DataFrame(rows)  # default RangeIndex: index == position in `requests`
    frame["n_ids"] = frame["n_ids"].astype("Int64")
    class_rows = frame["mode"] == "class"
    frame["class_ok"] = None
    frame.loc[class_rows, "class_ok"] = frame.loc[class_rows, "forget_class"].isin(list(classes))
    for column in ("request_id", "received_at", "reason", "subject_ref", "forget_class", "class_ok"):
        frame[column] = frame[column].astype(object)
    ids_frame = pd.DataFrame(
        [
            {"row": i, "sample_id": sample_id}
            for i, request in enumerate(requests)
            for sample_id in (_id_list(request.values.get("sample_ids")) or [])
        ],
        columns=["row", "sample_id"],
    )
    requests_def = (context.data_sources.add_pandas(name="requests")
                    .add_dataframe_asset(name="rows").add_batch_definition_whole_dataframe("all"))
    request_checks = [
        gxe.ExpectColumnValuesToBeInSet(column="is_object", value_set=[True], meta={"code": "not_a_request_object"}),
        gxe.ExpectColumnValuesToBeInSet(column="unknown_fields", value_set=[""], meta={"code": "unknown_field"}),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["samples", "class"], meta={"code": "need_exactly_one_of_sample_ids_or_forget_class"}),
        gxe.ExpectColumnValuesToBeInSet(column="class_ok", value_set=[True], meta={"code": "unknown_class"}),
        gxe.ExpectColumnValuesToNotBeNull(column="request_id", meta={"code": "request_id_missing_or_not_string"}),
        gxe.ExpectColumnValuesToMatchRegex(column="request_id", regex=REQUEST_ID_PATTERN, meta={"code": "request_id_malformed"}),
        gxe.ExpectColumnValuesToBeInSet(column="occurrence", value_set=[0], meta={"code": "duplicate_request_id"}),
        gxe.ExpectColumnValuesToNotBeInSet(column="request_id", value_set=sorted(seen_request_ids) or ["\0"], meta={"code": "duplicate_request_id"}),
        # n_ids is -1 when sample_ids is not a list of strings; otherwise it must be 1..max_ids.
        gxe.ExpectColumnValuesToNotBeInSet(column="n_ids", value_set=[-1], meta={"code": "sample_ids_not_list_of_strings"}),
        gxe.ExpectColumnValuesToBeBetween(column="n_ids", min_value=1, max_value=max_ids, row_condition="n_ids!=-1", condition_parser="pandas", meta={"code": "sample_ids_count_out_of_range"}),
        gxe.ExpectColumnValuesToNotBeNull(column="received_at", meta={"code": "received_at_missing_or_not_string"}),
        gxe.ExpectColumnValuesToMatchRegex(column="received_at", regex=ISO_8601, meta={"code": "received_at_not_iso8601"}),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", meta={"code": "reason_missing_or_not_string"}),
        gxe.ExpectColumnValuesToBeInSet(column="reason", value_set=list(reasons), meta={"code": "reason_not_allowed"}),
        gxe.ExpectColumnValuesToNotBeNull(column="subject_ref", meta={"code": "subject_ref_missing_or_not_string"}),
        gxe.ExpectColumnValueLengthsToBeBetween(column="subject_ref", min_value=1, max_value=512, meta={"code": "subject_ref_bad_length"}),
    ]
    failed = _failed_rows(requests_def, frame, request_checks)
    if len(ids_frame):
        ids_frame["pair"] = ids_frame["row"].astype(str) + "|" + ids_frame["sample_id"]
        ids_def = (context.data_sources.add_pandas(name="sample_ids")
                   .add_dataframe_asset(name="ids").add_batch_definition_whole_dataframe("all"))
        id_checks = [
            gxe.ExpectColumnValuesToMatchRegex(column="sample_id", regex=SAMPLE_ID_PATTERN, meta={"code": "sample_id_malformed"}),
            gxe.ExpectColumnValuesToBeInSet(column="sample_id", value_set=sorted(known_ids), meta={"code": "unknown_sample_id"}),
            gxe.ExpectColumnValuesToNotBeInSet(column="sample_id", value_set=sorted(deleted_ids) or ["\0"], meta={"code": "sample_already_deleted"}),
            gxe.ExpectColumnValuesToBeUnique(column="pair", meta={"code": "duplicate_sample_id_in_request"}),
        ]
        for index, codes in _failed_rows(ids_def, ids_frame, id_checks).items():
            failed.setdefault(int(ids_frame.loc[index, "row"]), []).extend(codes)
    return [
        Verdict(request, tuple(sorted(set(failed.get(i, []))))) for i, request in enumerate(requests)
    ]

