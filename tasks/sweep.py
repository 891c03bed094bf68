"""Method sweeps: compare unlearning methods and their settings on the pending deletion.

A sweep unlearns the pending batches from the champion once per candidate (a method and its
keyword arguments), evaluates every candidate exactly as the verify stage does
(:func:`tasks.stage.evaluation.evaluate_candidate`: the same attacks, the same references and the same
gate, in ``strict`` mode: a sweep trains the exact retrain once anyway, so every candidate is compared
with it, the parent being the positive control) and writes a comparison. It is read-only for the pipeline: nothing is
registered or promoted, and the ledger, the unlearn state and the audit log are not written.

The stages, in order (the ``method-sweep`` flow in :mod:`flows.sweep` runs each as a task and
fans the candidates out over the configured task runner):

* :func:`plan_sweep`: the candidates, validated against the method registry;
* :func:`prepare_sweep`: saves the champion's weights once, makes sure the exact retrain and the
  signals of the original, retrained and reference models are cached, so parallel workers only
  read shared files and need no MLflow;
* :func:`run_candidate`: one candidate, in any worker process (picklable arguments, no global
  state), deterministic given ``params.yaml: seed``;
* :func:`record_sweep`: ``data/reports/sweep.json`` and ``sweep.md``, and one MLflow parent run
  with a nested run per candidate.

Sample ids and subject references appear nowhere: reports and MLflow hold counts, batch ids
and a salted digest of the forget ids.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from tasks import dvc_ops, tracking
from tasks.project import PipelineError, Project
from tasks.stage.context import (
    check_architecture,
    finite_metrics,
    load_forget,
    resolve_device,
    tag_list,
    unlearning_data,
)
from tasks.stage.evaluation import evaluate_baselines, evaluate_candidate, evaluation_sets
from tasks.stage.retrain import retrained_model, retrained_path
from unlearn.config import ConfigError
from unlearn.data import SampleStore
from unlearn.files import atomic_path, utc_now, write_json_atomic, write_text_atomic
from unlearn.gate import UTILITY_CHECKS
from unlearn.methods import METHODS, run_method
from unlearn.methods.base import MethodArgumentError, MissingDataError
from unlearn.registry import UnknownNameError
from unlearn.requests import Ledger, hash_ids, load_or_create_salt
from unlearn.yaml_io import load_yaml

log = logging.getLogger("unlearn.pipeline")

REPORT_NAME, TABLE_NAME = "sweep.json", "sweep.md"
# Named like the escalation's candidate models so that purge's clean-up of finished escalations
# also removes a copy left behind by a sweep that died before its own clean-up.
WEIGHTS_PREFIX = "candidate-sweep-champion"
# A decimal number YAML 1.1 reads as a string ("1e-3"): method kwargs get a float instead.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------- plan


def _split_values(text: str) -> list[str]:
    """Split ``V1,V2`` on the commas outside brackets, so ``[3,4],[5,6]`` is two list values."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return values


def _scalar(text: str, where: str) -> Any:
    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {text!r} is not a YAML value ({str(exc).splitlines()[0]})") from None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def parse_override(text: str) -> tuple[str, str, list[Any]]:
    """Parse one grid override ``METHOD.KEY=V1,V2,...``.

    Values are YAML scalars (``3``, ``0.01``, ``1e-3``, ``true``, ``auto``) or flow lists
    (``[3,4]``); commas inside brackets do not separate values.

    Args:
        text: The override, e.g. ``amun.epochs=3,5``.

    Returns:
        (method, key, values), values in the given order.

    Raises:
        ConfigError: On bad syntax or an empty value.
    """
    where = f"--set {text!r}"
    name, sep, raw = text.partition("=")
    method, dot, key = name.strip().partition(".")
    if not sep or not dot or not method or not key or "." in key:
        raise ConfigError(f"{where}: expected METHOD.KEY=V1,V2,... (e.g. amun.epochs=3,5)")
    pieces = _split_values(raw)
    if any(not piece.strip() for piece in pieces):
        raise ConfigError(f"{where}: empty value (expected METHOD.KEY=V1,V2,...)")
    return method, key, [_scalar(piece.strip(), where) for piece in pieces]


def _label(method: str, changed: dict[str, Any]) -> str:
    if not changed:
        return method
    return f"{method}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) + ")"


def plan_sweep(project: Project, methods: Sequence[str] | None = None,
               overrides: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The candidates of a sweep: each method with its params.yaml kwargs, crossed with the grid overrides.

    Args:
        project: The project.
        methods: Method names (default: every method of ``unlearn.method`` + ``unlearn.escalation``
            except ``retrain``, which is the gate's target and evaluated in every sweep as such).
        overrides: Grid overrides ``METHOD.KEY=V1,V2`` (see :func:`parse_override`); each method
            gets the cartesian product of its keys' values, over its params.yaml kwargs.

    Returns:
        Candidates in plan order, each ``{"index", "method", "kwargs", "overrides", "label"}``;
        duplicates removed.

    Raises:
        ConfigError: On an unknown method (the message lists the registered ones), ``retrain``,
            an override for a method not swept, an unknown keyword argument (named), a key given
            twice, bad override syntax, or no candidate at all.
    """
    params = project.params
    names = list(dict.fromkeys(methods)) if methods else [m for m in params.unlearn.ladder if m != "retrain"]
    for name in names:
        try:
            METHODS.get(name)
        except UnknownNameError as exc:
            raise ConfigError(f"sweep: {exc}") from None
        if name == "retrain":
            raise ConfigError("sweep: 'retrain' is the gate's target, not a candidate: every candidate is "
                              "compared with the exact retrain already")
    if not names:
        raise ConfigError("sweep: nothing to sweep (the ladder holds only 'retrain'); name methods with --method")
    grids: dict[str, dict[str, list[Any]]] = {}
    for text in overrides or []:
        method, key, values = parse_override(text)
        if method not in names:
            raise ConfigError(f"--set {text!r}: {method!r} is not among the swept methods ({', '.join(names)}); "
                              f"add --method {method}")
        grid = grids.setdefault(method, {})
        if key in grid:
            raise ConfigError(f"--set {text!r}: {method}.{key} is given twice; list every value once: "
                              f"{method}.{key}=V1,V2")
        grid[key] = values
    candidates: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in names:
        spec, base, grid = METHODS.get(name), params.method_kwargs(name), grids.get(name, {})
        try:  # the same check params.yaml's method kwargs get (tasks.stage.checks.check_params)
            spec.bind({**base, **{key: values[0] for key, values in grid.items()}})
        except MethodArgumentError as exc:
            raise ConfigError(f"sweep: {exc}") from None
        for combo in itertools.product(*grid.values()):
            changed = dict(zip(grid, combo, strict=True))
            kwargs = {**base, **changed}
            identity = json.dumps([name, kwargs], sort_keys=True, default=str)
            if identity in seen:
                continue
            seen.add(identity)
            candidates.append({"index": len(candidates) + 1, "method": name, "kwargs": kwargs,
                               "overrides": changed, "label": _label(name, changed)})
    return candidates


# --------------------------------------------------------------------------- prepare


def _weights_path(project: Project, version: str) -> Path:
    return project.models_dir / f"{WEIGHTS_PREFIX}-v{version}.pt"


def cleanup_sweep(project: Project) -> None:
    """Delete the champion copy a sweep saved (a model trained on the samples being deleted)."""
    for path in project.models_dir.glob(f"{WEIGHTS_PREFIX}-*.pt") if project.models_dir.exists() else []:
        path.unlink(missing_ok=True)


NOTHING_TO_SWEEP = ("nothing to sweep: no deletion request is pending; a sweep compares methods on the pending "
                    "deletion: submit requests (`unlearn request submit`) and sweep again")


def require_something_to_sweep(project: Project) -> None:
    """Refuse a sweep with no pending batch and nothing in the inbox before the stages run.

    Why: the sweep runs ingest, prepare, the baseline and the reference models first, and only then found nothing
    pending: on a fresh project minutes of training, and a registered baseline, before the refusal (review of
    2026-12-07). An inbox entry that may become a request lets the stages run (ingest decides).
    """
    from tasks.stage.ingest import ingested_entries
    from unlearn.requests.parsing import skipped_in_inbox

    ledger = Ledger(project.ledger_path)
    if ledger.pending() or ledger.batches_with_status(Ledger.PROMOTING):
        return  # an interrupted promotion is named by prepare_sweep, after the stages finish it
    inbox = project.incoming_dir
    names = [p.name for p in inbox.iterdir() if not skipped_in_inbox(p.name)] if inbox.is_dir() else []
    if set(names) - ingested_entries(project.requests_dir, names):
        return
    raise PipelineError(NOTHING_TO_SWEEP)


def prepare_sweep(project: Project, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the candidates share, computed once before they fan out.

    Saves the champion's weights under ``data/models/`` (workers need no MLflow), makes sure
    the exact retrain is cached, and computes the original, retrained and reference models'
    signals into the signal cache (workers then only read shared cache files). Writes nothing
    to the ledger, the unlearn state or the registry.

    Args:
        project: The project.
        candidates: From :func:`plan_sweep`.

    Returns:
        The sweep's context (parent version, batch ids, counts, the original and retrained
        models' metrics, reference ids) and ``candidates``: each candidate with what a worker
        needs to run it (``parent_version``, ``weights``, ``batches``, ``forget_classes``).

    Raises:
        PipelineError: With no pending deletion, an interrupted promotion, no champion, or
            nothing to unlearn.
        ConfigError: With no candidate.
    """
    if not candidates:
        raise ConfigError("sweep: no candidate to run")
    ledger = Ledger(project.ledger_path)
    if ledger.batches_with_status(Ledger.PROMOTING):
        # The pipeline finishes an interrupted promotion before unlearning anything new; a sweep
        # changes nothing, so it cannot, and its parent would not be the model `unlearn run` starts from.
        raise PipelineError("a promotion was interrupted; run `unlearn run` to finish it, then sweep")
    pending = ledger.pending()
    if not pending:
        raise PipelineError(NOTHING_TO_SWEEP)
    client = tracking.setup(project)
    champion = tracking.champion_version(project, client)
    if champion is None:
        raise PipelineError("no champion model in the registry; run the train stage first (`unlearn run`)")
    check_architecture(project, champion)  # candidates are built as model.name and start from the champion
    version = str(champion.version)
    forget = load_forget(project, pending)
    if len(forget) == 0:
        raise PipelineError("nothing to sweep: the pending requests name only test-split samples, which no "
                            "model saw; `unlearn run` completes them without unlearning")
    store = SampleStore(project.store_dir)
    data = unlearning_data(project, store, forget)
    original = tracking.load_model(project, client, version)
    cleanup_sweep(project)
    weights = _weights_path(project, version)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        torch.save(original.state_dict(), tmp)
    retrained, retrain_seconds, cached = retrained_model(project, store, data)
    forget_classes = ledger.forget_classes(pending)
    sets = evaluation_sets(project, store, forget, forget_classes)
    baselines = evaluate_baselines(project, store, sets, original=original, retrained=retrained)  # strict mode
    shared = {"parent_version": version, "weights": weights.name, "batches": pending,
              "forget_classes": forget_classes}
    log.info("sweep: %d candidate(s) on %d forget samples, parent version %s", len(candidates), len(forget), version)
    return {
        **shared, "n_forget": len(sets.forget), "n_retain": len(sets.retain), "n_test": len(sets.test),
        "forget_ids_digest": hash_ids(forget.ids.tolist(), load_or_create_salt(project.salt_path)),
        "data_version": dvc_ops.data_version(project) if (project.root / "dvc.lock").exists() else "",
        "reference_models": baselines.reference_ids, "retrain_seconds": retrain_seconds, "retrain_cached": cached,
        "original": baselines.outcome["original"].metrics, "retrain": baselines.outcome["retrain"].metrics,
        "candidates": [{**candidate, **shared} for candidate in candidates],
    }


# --------------------------------------------------------------------------- one candidate


def run_candidate(project: Project, candidate: dict[str, Any]) -> dict[str, Any]:
    """Unlearn with one candidate from the saved champion weights and evaluate it like the verify stage.

    Runs in any worker process: it reads only files (the store, the quarantine, the saved
    weights, the cached retrain, references and signals), never MLflow, and writes nothing
    shared (the candidate's signals are not cached).

    Args:
        project: The project.
        candidate: One of :func:`prepare_sweep`'s ``candidates``.

    Returns:
        JSON-able: ``method``, ``kwargs``, ``label``, ``verdict`` (``pass``, ``fail``, or ``error``
        when the method itself raised, with ``error``), ``failures``, ``metrics`` (the unlearned
        model's), ``checks`` (per gate metric: unlearned, retrain, gap = unlearned - retrain, its
        interval, the margin, the parent's excess, verdict, passed),
        ``max_abs_gap`` and its metric, ``model_digest``, ``unlearn_seconds``, ``attack_seconds``.
    """
    params = project.params
    store = SampleStore(project.store_dir)
    forget = load_forget(project, candidate["batches"])
    data = unlearning_data(project, store, forget)
    path = project.models_dir / candidate["weights"]
    original = data.model_factory()
    try:
        original.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (FileNotFoundError, RuntimeError, EOFError, ValueError) as exc:
        raise PipelineError(f"sweep: the champion copy {path.name} is missing or corrupt ({exc}); "
                            "run the sweep again") from None
    original.eval()  # as tracking.load_model returns it, so a candidate equals the pipeline's attempt
    if not retrained_path(project, store).exists():
        # Workers must not train (and race on writing) the retrain: prepare_sweep caches it.
        raise PipelineError("sweep: the exact retrain is not cached; run prepare_sweep first")
    retrained, _, _ = retrained_model(project, store, data)
    sets = evaluation_sets(project, store, forget, list(candidate.get("forget_classes") or []))
    result: dict[str, Any] = {key: candidate[key] for key in ("index", "method", "kwargs", "overrides", "label")}
    started = time.perf_counter()
    try:
        model = run_method(candidate["method"], original, data, device=resolve_device(project), seed=params.seed,
                           kwargs=candidate["kwargs"], recalibrate_bn=params.unlearn.recalibrate_bn)
    except PipelineError:
        raise
    except (MissingDataError, MethodArgumentError, TypeError, ValueError, RuntimeError) as exc:
        # A bad value (or a method that cannot run on this data) fails its candidate, not the sweep.
        log.warning("sweep: %s failed: %s", candidate["label"], exc)
        return {**result, "verdict": "error", "error": f"{type(exc).__name__}: {exc}"[:500], "failures": [],
                "metrics": {}, "checks": [], "max_abs_gap": None, "max_gap_metric": None, "model_digest": None,
                "unlearn_seconds": time.perf_counter() - started, "attack_seconds": 0.0}
    unlearn_seconds = time.perf_counter() - started
    evaluation = evaluate_candidate(project, store, sets, model, method=candidate["method"], original=original,
                                    retrained=retrained, mode="strict", cache_candidate=False)
    checks = [{"metric": c.metric, "unlearned": c.candidate, "retrain": c.target, "gap": c.estimate,
               "gap_ci": [c.ci_low, c.ci_high], "margin": None if math.isnan(c.margin) else c.margin,
               "parent_excess": c.parent_excess, "parent_detected": c.parent_detected, "verdict": c.verdict,
               "passed": c.verdict == "pass" or evaluation.exact, "note": c.reason}
              for c in evaluation.decision.checks]
    # The worst measured gap; NaN gaps (a diverged model, a refused metric) fail their check already. Utility
    # checks are one-sided: accuracy above the retrain's is no gap.
    def gap(check: dict) -> float:
        return max(-check["gap"], 0.0) if check["metric"] in UTILITY_CHECKS else abs(check["gap"])

    worst = max((c for c in checks if math.isfinite(c["gap"])), key=gap, default=None)
    unlearned = evaluation.proofs.get("unlearned")
    return {**result, "verdict": evaluation.verdict, "error": None, "failures": evaluation.failures,
            "metrics": evaluation.results["unlearned"], "checks": checks,
            "max_abs_gap": None if worst is None else gap(worst),
            "max_gap_metric": None if worst is None else worst["metric"],
            "model_digest": None if unlearned is None else unlearned.digest,
            "unlearn_seconds": unlearn_seconds, "attack_seconds": evaluation.attack_seconds}


# --------------------------------------------------------------------------- record


def _rank_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """Passing first, then inconclusive, then failing, then the smallest worst gap; candidates that raised last."""
    worst = result.get("max_abs_gap")
    return ({"pass": 0, "inconclusive": 1, "fail": 2}.get(result["verdict"], 3), math.inf if worst is None else worst,
            result["index"])


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.4f}"


def format_sweep_table(document: dict[str, Any]) -> str:
    """The markdown comparison (``data/reports/sweep.md``), also what ``unlearn sweep`` prints.

    Args:
        document: The sweep report (:func:`record_sweep`'s ``sweep.json``).

    Returns:
        Markdown: context, a ranking table, the gap per gate metric, and the gate failures.
    """
    gate_metrics = sorted({c["metric"] for r in document["candidates"] for c in r.get("checks") or []})
    margins = {c["metric"]: c.get("margin") for r in document["candidates"] for c in r.get("checks") or []}
    accuracies = ("forget_acc", "retain_acc", "test_acc")
    lines = [
        "# Method sweep", "",
        f"Parent model version {document['parent_version']}; forget {document['n_forget']} / retain "
        f"{document['n_retain']} / test {document['n_test']} samples; {len(document['batches'])} pending batch(es); "
        f"seed {document['seed']}. Nothing was promoted.", "",
        "| rank | candidate | verdict | worst gap (metric) | " + " | ".join(accuracies) + " | unlearn s | attack s |",
        "|---:|---|---|---|" + "---:|" * len(accuracies) + "---:|---:|",
    ]
    for rank, result in enumerate(document["candidates"], 1):
        worst = ("-" if result.get("max_abs_gap") is None
                 else f"{_number(result['max_abs_gap'])} ({result['max_gap_metric']})")
        metrics = result.get("metrics") or {}
        lines.append(f"| {rank} | {result['label']} | {result['verdict']} | {worst} | "
                     + " | ".join(_number(metrics.get(m)) for m in accuracies)
                     + f" | {result['unlearn_seconds']:.1f} | {result['attack_seconds']:.1f} |")
    for role in ("retrain", "original"):
        lines.append(f"| - | {role} ({'the gate target' if role == 'retrain' else 'before unlearning'}) | - | - | "
                     + " | ".join(_number(document[role].get(m)) for m in accuracies) + " | - | - |")
    lines += ["", "Gap per gate metric (unlearned - retrain; margin = gate.margin_fraction x the parent's excess "
              "in brackets, for utility the allowed loss (gate.utility_loss_floor + the deleted share of the training "
              "data, at most gate.utility_loss_fraction, x the parent's skill), one-sided; - when the "
              "parent was not detected; * = not a pass):", "",
              "| rank | candidate | " + " | ".join(f"{m} ({_number(margins.get(m))})" for m in gate_metrics) + " |",
              "|---:|---|" + "---:|" * len(gate_metrics)]
    for rank, result in enumerate(document["candidates"], 1):
        checks = {c["metric"]: c for c in result.get("checks") or []}
        cells = [f"{_signed(checks[m]['gap']) if m in checks else '-'}"
                 f"{'' if m not in checks or checks[m]['passed'] else ' *'}" for m in gate_metrics]
        lines.append(f"| {rank} | {result['label']} | " + " | ".join(cells) + " |")
    problems = [(r["label"], r["error"] or "; ".join(r["failures"])) for r in document["candidates"]
                if r["verdict"] != "pass"]
    if problems:
        lines += ["", "Why candidates did not pass:", ""] + [f"- {label}: {why}" for label, why in problems]
    return "\n".join(lines) + "\n"


def record_sweep(project: Project, prepared: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the comparison and log it to MLflow: one parent run, one nested run per candidate.

    Args:
        project: The project.
        prepared: From :func:`prepare_sweep`.
        results: From :func:`run_candidate`, one per candidate (any order).

    Returns:
        ``report`` and ``table`` (paths), ``run_id`` (the parent MLflow run), counts, the best
        candidate and the ranked ``candidates``.
    """
    import mlflow

    params = project.params
    ranked = sorted(results, key=_rank_key)
    tracking.setup(project)
    report_path, table_path = project.reports_dir / REPORT_NAME, project.reports_dir / TABLE_NAME
    context = {key: prepared[key] for key in ("parent_version", "batches", "forget_classes", "n_forget", "n_retain",
                                             "n_test", "forget_ids_digest", "data_version", "reference_models",
                                             "original", "retrain")}
    passing = [r for r in ranked if r["verdict"] == "pass"]
    with mlflow.start_run(run_name="sweep") as parent:
        document = {"created_at": utc_now(), "run_id": parent.info.run_id,
                    "seed": params.seed, "gate": {"mode": "strict", "attacks": list(params.gate.attacks),
                                                  "accuracy_checks": list(params.gate.accuracy_checks),
                                                  "alpha": params.gate.alpha,
                                                  "margin_fraction": params.gate.margin_fraction,
                                                  "utility_loss_fraction": params.gate.utility_loss_fraction,
                                                  "utility_loss_floor": params.gate.utility_loss_floor},
                    **context,
                    "candidates": ranked}
        mlflow.log_params({"seed": params.seed, "n_forget": prepared["n_forget"], "n_retain": prepared["n_retain"],
                           "n_test": prepared["n_test"], "candidates": len(ranked),
                           "methods": ",".join(dict.fromkeys(r["method"] for r in ranked)),
                           "parent_version": prepared["parent_version"],
                           "recalibrate_bn": params.unlearn.recalibrate_bn})
        mlflow.set_tags({"stage": "sweep", "parent_version": prepared["parent_version"],
                         "request_batches": tag_list(prepared["batches"]),
                         "forget_ids_digest": prepared["forget_ids_digest"],
                         "data_version": prepared["data_version"], "git_commit": dvc_ops.git_commit(project),
                         "passing": str(len(passing)), "best": ranked[0]["label"] if ranked else ""})
        for role in ("original", "retrain"):
            mlflow.log_metrics({f"{role}.{k}": v for k, v in finite_metrics(prepared[role]).items()})
        for rank, result in enumerate(ranked, 1):
            with mlflow.start_run(run_name=f"sweep-{result['label']}"[:250], nested=True) as child:
                mlflow.log_params({"method": result["method"],
                                   **{f"method_{k}": v for k, v in result["kwargs"].items()}})
                mlflow.set_tags({"stage": "sweep", "method": result["method"], "verdict": result["verdict"],
                                 "candidate": result["label"][:5000], "rank": str(rank),
                                 "gate_failures": "; ".join(result["failures"])[:5000],
                                 "error": (result.get("error") or "")[:5000]})
                mlflow.log_metrics(finite_metrics(result["metrics"]))
                mlflow.log_metrics(finite_metrics({f"gap.{c['metric']}": c["gap"] for c in result["checks"]}))
                mlflow.log_metrics({"unlearn_seconds": result["unlearn_seconds"],
                                    "attack_seconds": result["attack_seconds"]})
                result["run_id"] = child.info.run_id
        write_json_atomic(report_path, document)
        write_text_atomic(table_path, format_sweep_table(document))
        mlflow.log_artifact(str(report_path), artifact_path="sweep")
        mlflow.log_artifact(str(table_path), artifact_path="sweep")
    log.info("sweep: %d candidate(s), %d passing; report %s", len(ranked), len(passing), report_path)
    return {"report": str(report_path), "table": str(table_path), "run_id": parent.info.run_id,
            "candidates": ranked, "passing": len(passing), "errors": sum(r["verdict"] == "error" for r in ranked),
            "best": ranked[0]["label"] if ranked else None}

