"""The contract between stages: the state files under ``data/state/`` and the escalation's typed state.

Every stage writes ``data/state/<stage>.json`` (what ``dvc.yaml`` tracks) through
:func:`write_state`, and a later stage reads it through :func:`read_state`. The escalation
(``unlearn.json``) is read and written by four modules (escalation, unlearn, verify, promote),
so it is typed: :class:`Escalation` and its :class:`Attempt` list. The JSON on disk keeps the
field names it always had, so a state written before this module existed still loads and a
re-run resumes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.project import PipelineError, Project
from unlearn.files import write_json_atomic

# Escalation statuses: no batch pending; only batches whose samples no model saw (nothing to
# unlearn); attempts still to run; ladder finished (one passed or held, or even the exact retrain failed); too few
# training samples left for any successor, so the served model was withdrawn instead.
NOTHING_PENDING, DATA_ONLY, UNLEARNING, DONE = "nothing_pending", "data_only", "unlearning", "done"
MODEL_WITHDRAWN = "model_withdrawn"


def read_state(project: Project, stage: str) -> dict[str, Any]:
    """A stage's state file (``data/state/<stage>.json``).

    Raises:
        PipelineError: If the stage has not run yet.
    """
    path = project.state_dir / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"stage {stage!r} has not run yet ({path} missing)") from None


def write_state(project: Project, stage: str, state: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's state file atomically and return the state."""
    write_json_atomic(project.state_dir / f"{stage}.json", state)
    return state


@dataclass
class Attempt:
    """One rung of the escalation: a method's model, and (once verified) its verdict.

    Attributes:
        method: The unlearning method.
        run_id: Its MLflow run.
        candidate: The model file under ``data/models/``.
        unlearn_seconds: Time the method took.
        started_at: When the model was saved (UTC).
        verdict: "pass", "fail", "inconclusive", or None until verified (an attempt cut off
            before its verdict is redone on resume).
        action: What follows the verdict (:func:`unlearn.gate_policy.next_action`): promote, retrain
            (next rung, or the exact retrain the inconclusive policy escalated to), hold or
            promote_low_power.
        failures: Why the gate failed (set when verified).
        report: The attempt's report under ``data/reports/attempts/`` (set when verified).
        verified_at: When it was verified.
        attack_seconds: Time the evaluation took.
    """

    method: str
    run_id: str
    candidate: str
    unlearn_seconds: float
    started_at: str
    verdict: str | None = None
    action: str | None = None
    failures: list[str] | None = None
    report: str | None = None
    verified_at: str | None = None
    attack_seconds: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        # The verification fields appear once verified, as they always have.
        verified = ("action", "failures", "report", "verified_at", "attack_seconds")
        return {k: v for k, v in asdict(self).items() if k not in verified or v is not None}

    def verified(self) -> bool:
        return self.verdict in ("pass", "fail", "inconclusive")


@dataclass
class Escalation:
    """The escalation state (``data/state/unlearn.json``): which batches, from which champion, and the attempts.

    Attributes:
        status: :data:`NOTHING_PENDING`, :data:`DATA_ONLY`, :data:`UNLEARNING`, :data:`DONE` or
            :data:`MODEL_WITHDRAWN`.
        next_method: The next rung to run (None when the ladder is finished).
        batches: The pending batches being unlearned.
        key: Identity of the escalation (champion, batches, policy): a resumed run must match it.
        parent_version: The champion version the attempts unlearn from.
        parent_model_id: Its logged model (MLflow model id; empty in a state written before it was recorded):
            version numbers start from 1 again in another registry, so the number alone cannot say that the
            champion is still the model the attempts unlearned.
        data_version_before: The champion's data version.
        data_version_after: The data version without the batches' samples.
        parent_covers_through: The newest batch the champion already forgot.
        n_forget: Forget samples.
        forget_classes: Labels forgotten as whole classes.
        ladder: The methods, in order.
        attempts: The rungs run so far.
        chosen: Index of the attempt that passed first (None if none has).
        run_id: The attempt promote registers (the chosen one, or the last when all failed).
        method: Its method.
        withdrawn_version: With :data:`MODEL_WITHDRAWN`: the champion that lost its alias (None if none).
        reason: With :data:`MODEL_WITHDRAWN`: why no successor could be trained; when the
            inconclusive policy escalated to the exact retrain: why (which bound was reached).
        held: The evidence was inconclusive and ``gate.on_inconclusive: hold`` keeps the batches
            pending (champion unchanged) to verify them with later batches.
        hold_until: With ``held``: the latest time the batches stay held (``max_hold_hours``
            after the oldest request); a run after it retrains exactly.
        low_power: The promoted attempt was inconclusive and promoted under
            ``gate.on_inconclusive: promote_low_power`` (certificates say so).
    """

    status: str
    next_method: str | None = None
    batches: list[str] = field(default_factory=list)
    key: str = ""
    parent_version: str = ""
    parent_model_id: str = ""
    data_version_before: str = ""
    data_version_after: str = ""
    parent_covers_through: str = ""
    n_forget: int = 0
    forget_classes: list[int] = field(default_factory=list)
    ladder: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    chosen: int | None = None
    run_id: str | None = None
    method: str | None = None
    withdrawn_version: str | None = None
    reason: str = ""
    held: bool = False
    hold_until: str = ""
    low_power: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Escalation:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        values["attempts"] = [Attempt.from_json(a) for a in data.get("attempts") or []]
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        if self.status == NOTHING_PENDING:
            return {"status": self.status, "next_method": None}
        if self.status == DATA_ONLY:
            return {"status": self.status, "batches": list(self.batches), "next_method": None}
        if self.status == MODEL_WITHDRAWN:
            return {"status": self.status, "batches": list(self.batches), "next_method": None,
                    "withdrawn_version": self.withdrawn_version, "reason": self.reason}
        out = asdict(self)
        out["attempts"] = [a.to_json() for a in self.attempts]
        return out

    def next_rung(self) -> Escalation:
        """Set ``next_method``, ``status``, ``chosen`` and the promoted attempt's ``run_id``/``method``.

        A pass ends the ladder (chosen). An inconclusive attempt ends it too unless its action is
        ``retrain`` (the exact retrain is then appended as the next rung): with ``hold`` nothing
        is chosen and the batches stay pending; with ``promote_low_power`` that attempt is chosen.
        A fail goes on to the next rung; a fail of the last rung goes on to the exact retrain
        (:meth:`exhausted`), so a batch no method can unlearn never stays pending for good and
        blocks every later request with it.
        """
        passed = [i for i, a in enumerate(self.attempts) if a.verdict == "pass"]
        tried = len(self.attempts)
        last = self.attempts[-1] if self.attempts else None
        inconclusive = bool(last and not passed and last.verdict == "inconclusive")
        if (inconclusive and last.action == "retrain") or self.exhausted():  # the exact retrain is next
            self.ladder = [*self.ladder[:tried], "retrain"]
        self.held = inconclusive and last.action == "hold"
        self.low_power = inconclusive and last.action == "promote_low_power"
        self.chosen = passed[0] if passed else (tried - 1 if self.low_power else None)
        finished = self.chosen is not None or self.held or tried >= len(self.ladder)
        self.next_method = None if finished else self.ladder[tried]
        self.status = DONE if finished else UNLEARNING
        final = (self.attempts[self.chosen] if self.chosen is not None
                 else (self.attempts[-1] if self.attempts and finished else None))
        self.run_id = final.run_id if final else None
        self.method = final.method if final else None
        return self

    def after_fail(self) -> str:
        """What a conclusive fail of the last attempt leads to: ``next_rung``, ``retrain`` or ``reject``.

        ``retrain`` when it was the last rung, every rung before it failed too, and it was not the exact
        retrain itself. Why: the deletion must be honoured, the exact retrain is the one model known never to
        have seen the samples, and the batches cannot wait for a better method (the next run would reach the
        same verdicts, and every later request is unlearned together with them). Like the hold's bound, this
        is the exceptional path; the per-request path stays the ladder's methods. ``reject``: the exact
        retrain itself did not verify as exact.
        """
        if len(self.attempts) < len(self.ladder):
            return "next_rung"
        earlier_failed = all(a.verdict == "fail" for a in self.attempts[:-1])
        return "retrain" if earlier_failed and self.attempts[-1].method != "retrain" else "reject"

    def exhausted(self) -> bool:
        """Every rung failed the gate conclusively and the exact retrain has not been tried (:meth:`after_fail`)."""
        return bool(self.attempts) and self.attempts[-1].verdict == "fail" and self.after_fail() == "retrain"

    def promoted_attempt(self) -> Attempt:
        """The attempt promote registers: the chosen one, else the last."""
        return self.attempts[self.chosen] if self.chosen is not None else self.attempts[-1]


def read_escalation(project: Project) -> Escalation:
    """The escalation state.

    Raises:
        PipelineError: If the unlearn stage has not run yet.
    """
    return Escalation.from_json(read_state(project, "unlearn"))


def write_escalation(project: Project, escalation: Escalation) -> dict[str, Any]:
    """Write the escalation state atomically; returns it as JSON (what the stage functions return)."""
    return write_state(project, "unlearn", escalation.to_json())


def attempt_report(project: Project, attempt: Attempt) -> tuple[dict[str, Any] | None, str]:
    """A verified attempt's report (its verdict's evidence) and, when it cannot be used, why
    (:func:`run_report`)."""
    return run_report(project, attempt.report, attempt.run_id)


def run_report(project: Project, name: str | None, run_id: str | None) -> tuple[dict[str, Any] | None, str]:
    """The report ``data/reports/attempts/<name>`` of unlearning run ``run_id``, and, when it cannot be used, why.

    Returns:
        (report, "") when the file holds a JSON report of this run with a verdict; else (None, "missing" |
        "unreadable" | "of another run"): a deleted file, a partial restore, an empty or truncated write, or
        another attempt's report under its name.
    """
    path = project.reports_dir / "attempts" / str(name)
    if not name or not run_id or not path.is_file():
        return None, "missing"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None, "unreadable"
    if not isinstance(report, dict) or "verdict" not in report:
        return None, "unreadable"
    if report.get("run_id") != run_id:
        return None, "of another run"
    return report, ""
