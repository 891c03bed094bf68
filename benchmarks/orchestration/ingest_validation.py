"""Benchmark: Great Expectations validation of deletion requests against the dataset's size.

Ingest validates every request file with Great Expectations (tasks/validation.py). One of its
checks is that every named sample id exists in the dataset. Until 2026-12-04 that check passed the
dataset's ids to GX as the expectation's ``value_set``, and GX copies an expectation's
configuration through pydantic for every metric it resolves: validation time grew with the
*dataset*, not with the request (6.4 s for one request against Fashion-MNIST's 70,000 ids). Now
membership is looked up in a Python set and GX checks the flag column. This script measures both, so the
regression would show.

For each dataset size (ids ``s0``..``s{N-1}``: 1,797 = digits, 70,000 = Fashion-MNIST) and each
request size (ids named per request), it times ``validate_requests`` on one valid request: the
median and range over ``--repeats`` calls after one warm-up call (the first call in a process also
builds GX's ephemeral context, reported apart). CPU seconds of this process (``time.process_time``),
so other load on a shared machine moves the figures little.

Writes benchmarks/results/ingest_validation.{md,json}.

Usage: python benchmarks/orchestration/ingest_validation.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

DATASET_SIZES = (1_797, 70_000)
REQUEST_SIZES = (10, 1_000)


def _request(n_ids: int):
    from unlearn.requests import RawRequest

    return RawRequest("bench.json", 0, {"request_id": "R-BENCH", "sample_ids": [f"s{i}" for i in range(n_ids)],
                                        "received_at": "2026-01-01T00:00:00Z", "reason": "gdpr_erasure",
                                        "subject_ref": "bench"})


def _validate(known: set[str], n_ids: int, *, legacy: bool) -> float:
    """CPU seconds of one validation; ``legacy`` gives GX the dataset's ids as a value_set (the old check)."""
    import great_expectations.expectations as gxe

    from tasks import validation

    original = gxe.ExpectColumnValuesToBeInSet
    if legacy:
        def old_check(*, column, value_set, meta):  # the flag column's check, rebuilt as it was
            if meta.get("code") == "unknown_sample_id":
                return original(column="sample_id", value_set=sorted(known), meta=meta)
            return original(column=column, value_set=value_set, meta=meta)

        gxe.ExpectColumnValuesToBeInSet = old_check
    try:
        start = time.process_time()
        (verdict,) = validation.validate_requests([_request(n_ids)], known_ids=known, reasons=("gdpr_erasure",),
                                                  max_ids=100_000)
        seconds = time.process_time() - start
    finally:
        gxe.ExpectColumnValuesToBeInSet = original
    assert verdict.valid, verdict.detail
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "ingest_validation"))
    args = parser.parse_args()

    start = time.process_time()
    _validate({f"s{i}" for i in range(100)}, 10, legacy=False)
    first_call = time.process_time() - start
    rows = []
    for dataset in DATASET_SIZES:
        known = {f"s{i}" for i in range(dataset)}
        for n_ids in REQUEST_SIZES:
            for legacy in (False, True):
                times = [_validate(known, n_ids, legacy=legacy) for _ in range(args.repeats)]
                rows.append({"dataset_ids": dataset, "request_ids": n_ids, "check": "value_set" if legacy else "flag",
                             "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
                print(rows[-1], flush=True)
    command = "python benchmarks/orchestration/ingest_validation.py" + (
        f" --repeats {args.repeats}" if args.repeats != 5 else "")
    payload = {"command": command, "repeats": args.repeats, "first_call_s": first_call,
               "platform": platform.platform(), "python": platform.python_version(), "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Request validation (Great Expectations) against the dataset's size",
        "",
        f"Command: `{command}`. CPU seconds of one `validate_requests` call on one valid request, median "
        f"[min, max] of {args.repeats} calls after a warm-up; the process's first call (it also builds GX's "
        f"ephemeral context) took {first_call:.2f} s. `flag`: the shipped check (membership looked up in "
        "a Python set, GX checks the flag column). `value_set`: the check before 2026-12-04 (the dataset's ids "
        "as the expectation's value_set), rebuilt here for comparison.",
        "",
        "| dataset ids | ids in the request | check | CPU s (median) | [min, max] |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['dataset_ids']:,} | {row['request_ids']:,} | {row['check']} | {row['median_s']:.2f} "
                     f"| [{row['min_s']:.2f}, {row['max_s']:.2f}] |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
