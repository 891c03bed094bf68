"""What the promotion gate decides: its verdict words and the records of its decision (:class:`MetricCheck`,
:class:`GateDecision`).

Split from :mod:`unlearn.gate`, which decides (it re-exports every name here): the records are read by the
pipeline's evidence, policy and certificates, which need the shape of a decision, not how it is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
ACCURACY_CHECKS = ("forget_acc", "test_acc", "utility", "class_acc")
# What a utility fail's reason says when its loss is not shown beyond what the references' learning curve estimates
# deleting this much costs an exact retrain: the fail stands (the allowance is the rule), and the words say the loss
# may be the deletion's own cost rather than damage (so the exact retrain, not another method, is what is called for)
DELETION_COST = "not shown beyond the deletion's estimated cost"
# Checks of what the model still does, not of what it forgot: the parent passes them by construction, so they
# are never a positive control of forgetting (GateDecision.parent_detected) and never a forgetting check.
UTILITY_CHECKS = ("test_acc", "utility")


@dataclass(frozen=True)
class MetricCheck:
    """The decision on one gated metric, with every number behind it.

    Attributes:
        metric: ``mia.<attack>.auc``, ``forget_acc``, ``class_acc``, ``test_acc`` or ``utility``.
        verdict: pass / fail / inconclusive.
        reason: The decision in plain words.
        candidate: Candidate's metric value (point estimate).
        target: Target's value (0.5 for an AUC in equivalence mode).
        estimate: candidate - target (point).
        ci_low / ci_high: (1 - 2 alpha) paired-bootstrap interval of candidate - target.
        parent_excess: parent - target (point); NaN for ``test_acc``; for ``utility`` the parent's skill
            (its accuracy minus the best constant prediction's).
        parent_ci_low / parent_ci_high: Its (1 - 2 alpha) interval.
        parent_detected: The positive control: the parent's interval lies above zero (``test_acc``: the
            ``forget_acc`` control, whose margin it borrows).
        margin: delta (NaN when the control failed).
        n_forget / n_negative: Samples behind the metric.
    """

    metric: str
    verdict: str
    reason: str
    candidate: float
    target: float
    estimate: float
    ci_low: float
    ci_high: float
    parent_excess: float
    parent_ci_low: float
    parent_ci_high: float
    parent_detected: bool
    margin: float
    n_forget: int
    n_negative: int


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict over every gated metric.

    Attributes:
        verdict: pass / fail / inconclusive (``inconclusive`` is never a pass).
        reason: Plain-words summary.
        checks: One :class:`MetricCheck` per gated metric (empty when refused up front).
        mode: "equivalence" or "strict".
        alpha: Level of each one-sided test; intervals are (1 - 2 alpha).
        margin_fraction: delta as a fraction of the parent's excess.
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.
        n_forget: |D_F|.
        n_targets: Retrains behind the target (0 in equivalence mode).
        reference_jackknife: Gated attack -> K, the reference models its intervals left out one at a time
            (the interval covers which references were trained); an attack not named here had no replicates.
    """

    verdict: str
    reason: str
    checks: tuple[MetricCheck, ...]
    mode: str
    alpha: float
    margin_fraction: float
    resamples: int
    seed: int
    n_forget: int
    n_targets: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    reference_jackknife: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True only for a ``pass`` verdict."""
        return self.verdict == PASS

    @property
    def parent_detected(self) -> bool:
        """True when the positive control detected the parent on every membership metric."""
        members = [c for c in self.checks if c.metric not in UTILITY_CHECKS]
        return bool(members) and all(c.parent_detected for c in members)

    def to_dict(self) -> dict:
        """JSON-ready record (for certificates, MLflow and ``unlearn request status``)."""
        out = asdict(self)
        out["checks"] = [asdict(c) for c in self.checks]
        out["parent_detected"] = self.parent_detected
        return out

    def summary(self) -> str:
        """Multi-line human-readable explanation, one line per metric."""
        lines = [f"verdict: {self.verdict} -- {self.reason}",
                 f"mode {self.mode}, alpha {self.alpha:g} per side ({100 * (1 - 2 * self.alpha):g}% intervals), "
                 f"margin {self.margin_fraction:g} x parent excess, {self.resamples} resamples, "
                 f"n_forget {self.n_forget}"]
        lines += [f"  {c.metric}: {c.verdict} -- {c.reason}" for c in self.checks]
        return "\n".join(lines)
