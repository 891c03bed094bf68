"""Which unlearning methods scheduled audits took out of the escalation ladder (``data/state/ladder.json``),
and the audits' history (``data/state/audits.json``).

Why a state file and not ``params.yaml``: a demotion is evidence the pipeline produced (an exact-retrain
audit showed the method's real gap beyond the gate's margin), not a setting someone chose. It must take
effect at the next escalation without anyone editing the config, survive restarts, and stay visible
(``unlearn status``) until a person reinstates the method with :func:`reinstate` after fixing it.

The exact ``retrain`` is the gate's own target and is never demoted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tasks.project import PipelineError, Project
from unlearn.files import utc_now, write_json_atomic

log = logging.getLogger("unlearn.pipeline")

EXACT = "retrain"


def _path(project: Project) -> Path:
    return project.state_dir / "ladder.json"


def _state(project: Project) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(demoted: method -> its demotion record, reinstated: method -> the audit whose demotion a person undid),
    both read from one ``ladder.json``; empty when there is none.

    Raises:
        PipelineError: If the file exists but is unreadable (an escalation must not silently re-admit a
            demoted method).
    """
    path = _path(project)
    if not path.exists():
        return {}, {}
    try:
        document = json.loads(path.read_text())
        methods = document["demoted"]
        if not isinstance(methods, dict):
            raise TypeError("demoted must be a map")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PipelineError(f"ladder state {path} is corrupt: {exc}") from None
    reinstated = document.get("reinstated", {})
    return methods, reinstated if isinstance(reinstated, dict) else {}


def demoted(project: Project) -> dict[str, dict[str, Any]]:
    """Method -> the demotion record (when, which audit, the offending metrics); empty when none (see
    :func:`_state` for what an unreadable file raises)."""
    return _state(project)[0]


def _write(project: Project, methods: dict[str, Any], reinstated: dict[str, str]) -> None:
    write_json_atomic(_path(project), {"demoted": methods, **({"reinstated": reinstated} if reinstated else {})})


def demote(project: Project, method: str, record: dict[str, Any]) -> None:
    """Take ``method`` out of the ladder (idempotent: a later audit's record replaces the earlier one)."""
    if method == EXACT:
        raise ValueError("the exact retrain is the gate's target and cannot be demoted")
    methods, reinstated = _state(project)
    methods[method] = {**record, "demoted_at": record.get("demoted_at") or utc_now()}
    _write(project, methods, reinstated)


def reinstate(project: Project, method: str) -> bool:
    """Put a demoted method back (after it was fixed); returns whether it was demoted.

    The demotion's audit is remembered as undone, so :func:`recover_demotions` does not take the method out again
    on the strength of that same audit."""
    methods, reinstated = _state(project)
    record = methods.pop(method, None)
    if record is None:
        return False
    # the newest audit of the method on record, which may be later than the one the ladder names (an audit of the
    # demoted method cut off after its history): recovery must not undo the reinstatement on its strength
    try:
        latest = _latest_audits(project).get(method, record)
    except PipelineError:  # a damaged history: the ladder's own record (recovery applies nothing from it anyway)
        latest = record
    _write(project, methods, {**reinstated, method: str(latest.get("audit_id", ""))})
    return True


def recover_demotions(project: Project) -> list[str]:
    """Apply the demotions the audit history records but the ladder lacks; returns the methods demoted here.

    An audit writes its history (and its ``method.audited`` record) first and the demotion after, so that nothing
    says a method was demoted, or skips it, without the audit that decided it on record. A crash between the two
    leaves a recorded demotion not yet applied: it is applied here, by the next audit or escalation, unless a person
    reinstated the method after that audit (review of 2026-12-07: the demotion was written first, and a crash then
    left the method skipped for good with no audit on record).
    """
    try:
        latest = _latest_audits(project)
    except PipelineError as exc:  # a damaged history must not stop every deletion: the demotions on file stand
        log.warning("audit: %s; demotions it records but the ladder lacks are not applied", exc)
        return []
    (methods, reinstated), applied = _state(project), []
    for method, record in latest.items():
        if (not record.get("demoted") or method == EXACT or method in methods
                or reinstated.get(method) == record.get("audit_id")):
            continue
        demote(project, method, {"audit_id": record.get("audit_id"), "metrics": record.get("offending") or [],
                                 "audited_version": record.get("model_version"), "run_id": record.get("run_id"),
                                 "demoted_at": record.get("at")})
        log.warning("audit: %s demoted on recovery: the audit %s decided it and a crash cut off the demotion",
                    method, record.get("audit_id"))
        applied.append(method)
    return applied


def active_ladder(project: Project, ladder: list[str] | tuple[str, ...]) -> list[str]:
    """``ladder`` without demoted methods, logging each one skipped.

    If every configured method was demoted, the exact retrain alone remains: a deletion must still be
    honoured, and only the exact retrain is known to meet the gate.
    """
    out = list(ladder)
    gone = demoted(project)
    for method in [m for m in out if m in gone]:
        record = gone[method]
        log.warning("escalation: skipping %s (demoted by the audit of %s on %s: audited gap beyond the margin on %s)",
                    method, record.get("audit_id", "?"), record.get("demoted_at", "?"),
                    ", ".join(record.get("metrics", [])) or "?")
    out = [m for m in out if m not in gone]
    return out or [EXACT]


# --------------------------------------------------------------------------- audit history


def history(project: Project) -> list[dict[str, Any]]:
    """Every audit record so far (``data/state/audits.json``), oldest first."""
    path = project.state_dir / "audits.json"
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["audits"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PipelineError(f"audit history {path} is corrupt: {exc}") from None


def append_history(project: Project, record: dict[str, Any]) -> None:
    """Add one audit record (:mod:`tasks.method_audit`) to the history."""
    records = history(project) + [record]
    write_json_atomic(project.state_dir / "audits.json", {"audits": records})


def _latest_audits(project: Project) -> dict[str, dict[str, Any]]:
    """The most recent audit record per method, as written.

    Raises:
        PipelineError: If a record is not a map naming its method.
    """
    records = history(project)
    if not all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in records):
        raise PipelineError(f"audit history {project.state_dir / 'audits.json'} is corrupt: a record names no method")
    return {record["method"]: record for record in records}


def last_per_method(project: Project) -> dict[str, dict[str, Any]]:
    """The most recent audit per method, with whether the method is demoted now (``unlearn status``)."""
    out = _latest_audits(project)
    gone = demoted(project)
    return {m: {"at": r["at"], "verdict": r["verdict"], "demoted": m in gone, "model_version": r["model_version"],
                "gaps": {c["metric"]: {"estimate": c["estimate"], "ci": c["ci"], "margin": c["margin"]}
                         for c in r["checks"]}} for m, r in out.items()}
