"""What ``unlearn run`` and ``unlearn demo`` print after a pipeline run: the stages' outcome and the gate's table.

Split from :mod:`flows.cli` (the command itself): these read the run's result and its verification report only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def refused_metric_name(metric: str) -> str:
    """``mia.<attack>.tpr_at_fpr_0.001`` -> ``tpr_at_fpr_0.001`` (the FPR's own dot must survive)."""
    parts = metric.split(".", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "mia" else metric


def format_gate(report: dict[str, Any]) -> list[str]:
    """The gate's table: per gated metric the parent's excess (the positive control), the candidate's
    difference from the target with its interval, the margin, and the verdict; then the decision."""
    level = f"{100 * report.get('interval_level', 0.9):g}%"
    target = "exact retrain" if report.get("mode") == "strict" else "never trained"
    header = (f"{'gated metric':<24}{'parent excess':>14}{'  ' + level + ' CI':<20}{'cand - target':>14}"
              f"{'  ' + level + ' CI':<20}{'margin':>8}  verdict")
    lines = [f"forget {report['n_forget']} / retain {report['n_retain']} / test {report['n_test']} samples; "
             f"method {report['method']}; gate mode {report.get('mode')} (target: {target})", header,
             "-" * len(header)]

    def num(value: Any, signed: bool = True) -> str:
        return "-" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")

    for c in report.get("checks", []):
        parent_ci = "-" if c["parent_ci_low"] is None else f"  [{num(c['parent_ci_low'])}, {num(c['parent_ci_high'])}]"
        cand_ci = f"  [{num(c['ci_low'])}, {num(c['ci_high'])}]"
        # test_acc borrows forget_acc's control; utility's control is the parent's skill above a constant prediction,
        # and with too few samples of the kept classes there is nothing to control
        unmeasured = c["metric"] == "utility" and not c["parent_detected"]
        detected = "" if c["metric"] == "test_acc" else (" (not measurable)" if unmeasured else (
            " (control ok)" if c["parent_detected"] else " (no control)"))
        lines.append(f"{c['metric']:<24}{num(c['parent_excess']):>14}{parent_ci:<20}{num(c['estimate']):>14}"
                     f"{cand_ci:<20}{num(c['margin'], signed=False):>8}  {c['verdict']}{detected}")
    if not report.get("checks"):
        lines.append("(no metric tested)")
    refused = sorted({refused_metric_name(m) for m in report.get("refused", {}).get("unlearned", {})})
    if refused:
        lines.append(f"refused (too few forget or test samples for the FPR): {', '.join(refused)} "
                     "(details in the report)")
    lines.append(f"\nverdict: {report['verdict'].upper()} -- {report.get('reason', '')}")
    if report.get("policy_reason"):
        lines.append(f"policy: {report['policy_reason']}")
    return lines


def _rung_to_show(root: Path, result: dict[str, Any], report: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The attempt whose gate table a summary shows, and how to name it.

    The last attempt's, unless it is the exact retrain: its table says only that it is exact, while the
    rung before it says why the ladder got there (a conclusive fail, with its control).
    """
    attempts = (result.get("unlearn") or {}).get("attempts") or []
    if report.get("evidence") == "exact" and len(attempts) > 1:
        before = attempts[-2] if isinstance(attempts[-2], dict) else {}
        path = root / "data" / "reports" / "attempts" / str(before.get("report") or "")
        if before.get("report") and path.is_file():
            return json.loads(path.read_text()), f"the rung before the exact retrain, {before.get('method')}"
    return report, "the last attempt"


def format_summary(result: dict[str, Any]) -> str:
    """What the demo and `unlearn run` print: the gate's table, the verdict and what the pipeline did."""
    report_path = Path(result["root"]) / "data" / "reports" / "verification.json"
    promote = result.get("promote", {})
    ingest = result.get("ingest", {})
    lines = [
        f"\nrequests: {ingest.get('rows', 0)} received, {ingest.get('accepted', 0)} accepted, "
        f"{ingest.get('acknowledged', 0)} acknowledged (duplicate or already deleted), "
        f"{ingest.get('rejected', 0)} rejected (batch {ingest.get('batch_id') or '-'})",
    ]
    rejected = ingest.get("rejected_requests") or []
    if rejected:
        shown = "; ".join(f"{r.get('request_id') or '(unreadable id)'}: {', '.join(r.get('reasons') or [])}"
                          for r in rejected)
        more = ingest.get("rejected", 0) - len(rejected)
        lines.append(f"rejected: {shown}{f'; and {more} more' if more > 0 else ''} "
                     "(`unlearn request status <id>` says why; fix and resubmit)")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if promote.get("recovered"):
        lines.append(f"finished an interrupted promotion: version {promote.get('version')} is champion "
                     f"(aliases: {promote.get('aliases')})")
        return "\n".join(lines)
    if promote.get("status") not in ("promoted", "rejected", "held") or report.get("status") != "verified":
        lines.append(f"nothing to unlearn (unlearn: {result.get('unlearn', {}).get('status')})")
        return "\n".join(lines)
    shown, which = _rung_to_show(Path(result["root"]), result, report)
    lines += format_gate(shown)
    attempts = promote.get("attempts") or []
    if len(attempts) > 1:
        lines.append("escalation: " + " -> ".join(f"{method} ({verdict})" for method, verdict in attempts)
                     + f"  (the table shows {which})")
    if promote.get("status") == "held":
        lines.append(f"held: the batch stays pending (champion unchanged) and is verified again with later batches; "
                     f"at the latest {promote.get('hold_until')} (or after gate.max_hold_batches batches) it is "
                     "retrained exactly")
    else:
        lines.append(f"model version {promote['version']} ({promote['status']}, evidence: {report.get('evidence')}); "
                     f"aliases right after promotion: {promote.get('aliases')}")
    purge = result.get("purge", {})
    if purge.get("status") == "purged":
        scan = purge.get("scan", {})
        removed = purge.get("objects_removed", {})
        lines.append(f"purge: retired model version(s) {', '.join(purge.get('retired', [])) or '-'}; "
                     f"{len(purge.get('versions_redacted', []))} data version(s) redacted, "
                     f"{removed.get('local', 0)} cache / {removed.get('remote', 0)} remote object(s) deleted; "
                     f"{scan.get('files', 0)} files scanned, {scan.get('matches', 0)} copies of deleted samples found")
    certify = result.get("certify", {})
    if certify.get("certificates"):
        lines.append(f"certificates: {certify['certificates']} written to {certify['dir']} "
                     "(`unlearn request certificate <id>`)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- status / certificate / audit
