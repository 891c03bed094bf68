"""The plain-words statement of a verdict never says more, or other, than the verification showed.

An inconclusive verdict whose positive control did detect the parent (the interval crossed the margin) was
described as "the attacks could not detect the original model's memory" (gate review, 2026-12-06).
"""

import pytest

from tasks.evidence import STRENGTHS, evidence_summary, statement


@pytest.mark.parametrize("strength, detected, says, never", [
    ("low_power", True, "the attacks detected the original model's memory", "could not detect"),
    ("low_power", False, "could not detect", "attacks detected"),
    ("low_power", None, "could not detect", "attacks detected"),
    ("inconclusive", True, "too few samples to decide either way; NOT a pass", "could not tell"),
    ("inconclusive", False, "could not tell either way; NOT a pass", "attacks detected"),
])
def test_an_inconclusive_statement_says_whether_the_control_detected_the_parent(strength, detected, says, never):
    text = statement("inconclusive", strength, detected)
    assert says in text and never not in text


def test_pass_fail_and_exact_statements_do_not_depend_on_the_control_flag():
    assert statement("pass", "conclusive", True).startswith("verified:")
    assert statement("fail", "conclusive", True).startswith("failed:")
    assert statement("pass", "exact", False) == STRENGTHS["exact"]


def test_the_summary_passes_the_reports_control_flag():
    report = {"verdict": "inconclusive", "evidence": "low_power", "parent_detected": True, "checks": []}
    assert "attacks detected" in evidence_summary(report)["statement"]


def test_a_diverged_candidate_is_not_called_conclusive():
    """A diverged candidate fails with no metric scored, so no positive control ran: its evidence is 'diverged'."""
    from tasks.stage.verify import evidence_strength

    assert evidence_strength("fail", "retrain", False, tested=False) == "diverged"
    assert evidence_strength("fail", "retrain", False, tested=True) == "conclusive"
    assert evidence_strength("pass", "promote", False) == "conclusive"
    text = statement("fail", "diverged", False)
    assert "not finite" in text and "measurably unlike" not in text


@pytest.mark.parametrize("failed, says, never", [
    (["utility"], "lost more accuracy on unseen samples", "still behaves measurably unlike"),
    (["test_acc"], "lost more accuracy on unseen samples", "still behaves measurably unlike"),
    (["mia.lira_offline.auc"], "still behaves measurably unlike", "lost more accuracy"),
    (["forget_acc", "utility"], "still behaves measurably unlike", "NOTHING"),
    (None, "still behaves measurably unlike", "lost more accuracy"),
])
def test_a_failed_statement_says_what_failed(failed, says, never):
    """A model that failed only the utility check was not shown to remember anything: saying so would be false."""
    text = statement("fail", "conclusive", True, failed=failed)
    assert text.startswith("failed:") and says in text and never not in text
    if failed == ["forget_acc", "utility"]:
        assert "lost more accuracy" in text


def test_the_summary_names_a_utility_failure():
    report = {"verdict": "fail", "evidence": "conclusive", "parent_detected": True,
              "checks": [{"metric": "forget_acc", "verdict": "pass"}, {"metric": "utility", "verdict": "fail"}]}
    text = evidence_summary(report)["statement"]
    assert "lost more accuracy" in text and "still behaves" not in text


@pytest.mark.parametrize("strength, starts", [("inconclusive", "inconclusive:"), ("low_power", "LOW POWER:")])
def test_an_inconclusive_utility_alone_is_not_called_too_few_samples_to_show_forgetting(strength, starts):
    """Forgetting shown with power, utility unmeasurable: the statement said 'too few samples to show the unlearned
    model equivalent', which was false (review)."""
    report = {"verdict": "inconclusive", "evidence": strength, "parent_detected": True,
              "checks": [{"metric": "mia.lira_offline.auc", "verdict": "pass"},
                         {"metric": "utility", "verdict": "inconclusive"}]}
    text = evidence_summary(report)["statement"]
    assert text.startswith(starts) and "shown statistically equivalent" in text and "could not be verified" in text
    assert "too few samples" not in text
    report["checks"][0]["verdict"] = "inconclusive"  # forgetting open too: the usual wording
    assert "shown statistically equivalent" not in evidence_summary(report)["statement"]


def test_a_utility_fail_within_the_deletions_estimated_cost_says_so():
    """The references' learning curve: a utility fail not shown beyond what the deletion is estimated to cost an exact
    retrain keeps its verdict and its statement says the loss may be the deletion's own."""
    from unlearn.gate import DELETION_COST

    report = {"verdict": "fail", "evidence": "conclusive", "parent_detected": True,
              "checks": [{"metric": "mia.lira_offline.auc", "verdict": "pass"},
                         {"metric": "utility", "verdict": "fail",
                          "reason": f"utility lost: ...; {DELETION_COST}: ..."}]}
    text = evidence_summary(report)["statement"]
    assert text.startswith("failed:") and "lost more accuracy on unseen samples than the gate allows" in text
    assert "estimated to cost an exact retrain" in text and "still behaves" not in text
    report["checks"][1]["reason"] = "utility lost: ..."  # a plain fail: no such words
    assert "estimated to cost" not in evidence_summary(report)["statement"]


@pytest.mark.parametrize("strength", ["low_power", "inconclusive"])
def test_an_undetected_statement_names_the_attacks_that_did_detect_or_says_nothing_was_scored(strength):
    """Review of 2026-12-07: "the attacks could not detect the original model's memory" was said when one attack
    had detected it, and when the gate stopped before scoring anything."""
    def summary(checks):
        return evidence_summary({"verdict": "inconclusive", "evidence": strength, "parent_detected": False,
                                 "checks": checks})["statement"]

    mixed = summary([{"metric": "mia.lira_offline.auc", "verdict": "inconclusive", "parent_detected": True},
                     {"metric": "mia.rmia_offline.auc", "verdict": "inconclusive", "parent_detected": False},
                     {"metric": "utility", "verdict": "pass", "parent_detected": True}])
    assert "detected the original model's memory of these samples on mia.lira_offline.auc but not on " \
           "mia.rmia_offline.auc" in mixed and "could not detect" not in mixed and "utility" not in mixed
    unscored = summary([])
    assert "no attack was scored" in unscored and "could not detect" not in unscored
    none = summary([{"metric": "mia.lira_offline.auc", "verdict": "inconclusive", "parent_detected": False}])
    assert none == STRENGTHS[strength]
    # every check detected it, in a report without the decision's flag: no "but not on" with nothing after it
    every = evidence_summary({"verdict": "inconclusive", "evidence": strength, "checks": [
        {"metric": "mia.lira_offline.auc", "verdict": "inconclusive", "parent_detected": True}]})["statement"]
    assert "but not on" not in every and "the attacks detected the original model's memory" in every
    # a report that does not list its checks is not read as "nothing was scored"
    unlisted = evidence_summary({"verdict": "inconclusive", "evidence": strength, "parent_detected": False})
    assert "no attack was scored" not in unlisted["statement"]
    for text in (mixed, unscored):
        assert ("NOT a pass" in text) == (strength == "inconclusive") and ("LOW POWER" in text) == (strength ==
                                                                                                     "low_power")
