"""How strong the evidence behind a verdict is, in plain words (certificates, request status, CLI).

A certificate must never overstate what verification showed (issue #12): "pass" only when the
positive control (the parent) was detected and the candidate was shown equivalent to a
never-trained model; "inconclusive" says the evidence could not tell; "exact" means the model
was retrained without the samples, so no statistical claim is needed.
"""

from __future__ import annotations

from typing import Any

from unlearn.gate import DELETION_COST, UTILITY_CHECKS

# The gate tests an average (an AUC, an accuracy gap) over the whole forget set verified together: every request of
# the batch, and of held batches verified with it. Certificates are per request: they must not read as a per-sample
# or per-person guarantee (review of 2026-12-07).
AVERAGE = ("shown on average over all the forget samples verified together (this request's among them), not for "
           "each sample or person on its own")

STRENGTHS = {
    "exact": "exact: the model was retrained from scratch without the deleted samples; it never saw them",
    # A pass, or a failed forgetting check, needs the attacks to have detected the parent (positive control); a
    # model can also fail on utility alone, which measured lost accuracy, not memory (review of 2026-12-07).
    "conclusive": "conclusive: the gate decided with power: a pass or a failed forgetting check means the attacks "
                  "detected the original model's memory of these samples (positive control); a failed utility "
                  "check means the accuracy lost on unseen samples was measured beyond the margin",
    "low_power": "LOW POWER: the attacks could not detect the original model's memory of these samples, so the "
                 "test could not show forgetting either way; promoted under gate.on_inconclusive: promote_low_power",
    "inconclusive": "inconclusive: the attacks could not tell either way; NOT a pass",
    "diverged": "failed without a statistical test: the unlearned model's outputs were not finite (it diverged), "
                "so it was rejected; no attack scored it",
}


def evidence_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    """The parts of a verification report a reader of a certificate or a status needs.

    Args:
        report: An attempt's verification report (``data/reports/attempts/<run>.json``), or None.

    Returns:
        ``verdict``, ``evidence``, ``statement`` (plain words), ``reason``, ``mode``,
        ``parent_detected``, ``interval_level`` and per gated metric the parent's excess with its
        interval, the candidate's difference from the target with its interval, the margin and the
        metric's verdict. Empty when there is no report.
    """
    if not report:
        return {}
    strength = report.get("evidence") or "inconclusive"
    checks = [{k: c.get(k) for k in ("metric", "verdict", "parent_excess", "parent_ci_low", "parent_ci_high",
                                     "parent_detected", "estimate", "ci_low", "ci_high", "margin", "reason")}
              for c in report.get("checks") or []]
    return {"verdict": report.get("verdict"), "evidence": strength,
            "statement": statement(report.get("verdict"), strength, report.get("parent_detected"),
                                   failed=[c["metric"] for c in checks if c.get("verdict") == "fail"],
                                   unsettled=[c["metric"] for c in checks if c.get("verdict") == "inconclusive"],
                                   costly=[c["metric"] for c in checks if c.get("verdict") == "fail"
                                           and DELETION_COST in str(c.get("reason") or "")],
                                   # only from a report that lists its checks (an empty list: none was scored)
                                   detected=[c["metric"] for c in checks if c["metric"] not in UTILITY_CHECKS
                                             and c.get("parent_detected")] if "checks" in report else None,
                                   undetected=[c["metric"] for c in checks if c["metric"] not in UTILITY_CHECKS
                                               and not c.get("parent_detected")] if "checks" in report else None),
            "reason": report.get("reason"), "mode": report.get("mode"),
            "parent_detected": report.get("parent_detected"), "interval_level": report.get("interval_level"),
            "margin_fraction": report.get("margin_fraction"), "checks": checks,
            "n_forget": report.get("n_forget"), "n_test": report.get("n_test"),
            "interval_scope": report.get("interval_scope")}


# A utility fail not shown beyond the loss the references estimate for this deletion (unlearn.gate.DELETION_COST)
COSTLY = (" (not shown beyond what deleting this much is estimated to cost an exact retrain: the loss may be the "
          "deletion's own, which the exact retrain answers)")

# An inconclusive verdict whose positive control did detect the parent: the attacks had power, the samples were too
# few to show equivalence (the interval crossed the margin). Saying "could not detect" there would be false.
DETECTED_LOW_POWER = ("LOW POWER: the attacks detected the original model's memory of these samples, but there were "
                      "too few samples to show the unlearned model equivalent to one that never saw them (the "
                      "interval crossed the margin); promoted under gate.on_inconclusive: promote_low_power")
DETECTED_INCONCLUSIVE = ("inconclusive: the attacks detected the original model's memory of these samples, but there "
                         "were too few samples to decide either way; NOT a pass")


def _open(strength: str, shown: str) -> str:
    """An inconclusive statement (promoted on low power, or held): what was shown, then what it means."""
    return (f"LOW POWER: {shown}; promoted under gate.on_inconclusive: promote_low_power" if strength == "low_power"
            else f"inconclusive: {shown}; NOT a pass")


def statement(verdict: str | None, strength: str, parent_detected: bool | None = None,
              failed: list[str] | None = None, unsettled: list[str] | None = None,
              costly: list[str] | None = None, detected: list[str] | None = None,
              undetected: list[str] | None = None) -> str:
    """One sentence: what the verification shows, never more than it shows.

    ``parent_detected``: whether the positive control detected the parent (the report's field); an inconclusive
    verdict then says the samples, not the attacks, were what fell short. ``failed``: the metrics that failed; a
    model that failed only a utility check (``utility``, ``test_acc``) was not shown to remember anything, so its
    statement says what it lost instead. ``unsettled``: the inconclusive metrics; when they are all utility checks,
    forgetting was shown (with power) and only the accuracy could not be verified, which is what is said.
    ``costly``: failed utility checks whose loss was not shown beyond what deleting this much is estimated to cost
    an exact retrain (:data:`unlearn.gate.DELETION_COST`): the fail says so. ``detected``/``undetected``: the
    forgetting metrics whose positive control did / did not detect the parent; when both are given and the parent
    was not detected on every one, an inconclusive statement names them instead of saying the attacks detected
    nothing, and with no metric at all (the gate refused before scoring) it says that nothing was scored (review of
    2026-12-07).
    """
    if strength in ("exact", "diverged"):
        return STRENGTHS[strength]
    open_ = verdict not in ("pass", "fail") and strength in ("low_power", "inconclusive")
    if open_ and parent_detected and unsettled and all(m in UTILITY_CHECKS for m in unsettled):
        return _open(strength, "the unlearned model was shown statistically equivalent to one that never trained on "
                               f"these samples ({AVERAGE}), but its accuracy on unseen samples could not be verified "
                               f"({', '.join(unsettled)})")
    # every check detected it, whether or not the report recorded the decision's flag
    if open_ and (parent_detected or (detected and undetected == [])):
        return DETECTED_LOW_POWER if strength == "low_power" else DETECTED_INCONCLUSIVE
    if open_ and detected is not None and undetected is not None and (detected or not undetected):
        # none scored, or some detected (none detected: the standing sentence below says exactly that)
        return _open(strength, "no attack was scored (the gate stopped before testing: see the reason), so nothing "
                               "about forgetting was shown" if not detected else
                     f"the attacks detected the original model's memory of these samples on {', '.join(detected)} but "
                     f"not on {', '.join(undetected)}, so forgetting could not be shown on every gated attack")
    if verdict == "pass" and strength == "conclusive":
        return ("verified: the unlearned model is statistically equivalent to one that never trained on these "
                "samples, within a margin set by what the attacks detected in the original model; " + AVERAGE)
    if verdict == "fail":
        lost = bool(failed) and any(m in UTILITY_CHECKS for m in failed)
        remembers = not failed or any(m not in UTILITY_CHECKS for m in failed)
        said = (["the model still behaves measurably unlike one that never trained on these samples"] if remembers
                else []) + ([f"it lost more accuracy on unseen samples than the gate allows{COSTLY if costly else ''}"]
                            if lost else [])
        return "failed: " + "; and ".join(said)
    return STRENGTHS.get(strength, STRENGTHS["inconclusive"])
