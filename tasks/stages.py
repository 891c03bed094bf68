"""The pipeline stages: the one implementation that Prefect tasks and ``dvc repro`` both run.

Each ``run_<stage>(project)`` reads its inputs from the project directory / registry, writes
its outputs, records a small JSON state file under ``data/state/`` (what ``dvc.yaml`` tracks),
and returns a summary dict. Stages never log raw forget-set data or subject identifiers: logs
and MLflow hold counts, hashed id digests and batch ids only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks import dvc_ops, tracking
from tasks.project import PipelineError, Project
from tasks.validation import validate_requests
from unlearn.config import ConfigError, Params
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays
from unlearn.methods import METHODS, TensorSet, UnlearningData, run_method
from unlearn.models import MODELS, build_model
from unlearn.requests import (
    Ledger,
    hash_ids,
    hash_subject,
    load_or_create_salt,
    parse_request_file,
    write_json_atomic,
)
from unlearn.training import SGDRecipe, accuracy, seed_everything, to_float, train_model
from unlearn.verification import DivergedModelError, EvalSets, apply_gate, evaluate_model, gate_metrics

log = logging.getLogger("unlearn.pipeline")

STAGES = ("ingest", "prepare", "train", "unlearn", "verify", "promote")


# --------------------------------------------------------------------------- helpers


def check_params(params: Params) -> None:
    """Check every name in params.yaml against the registries, before any work starts.

    Raises:
        ConfigError: On an unknown method, attack, model or source name, a bad method
            keyword argument, or a gate tolerance for a metric that is not computed.
    """
    from unlearn.attacks import ATTACKS
    from unlearn.data import SOURCES
    from unlearn.registry import UnknownNameError

    try:
        SOURCES.get(params.data.source)
        MODELS.get(params.model.name)
        spec = METHODS.get(params.unlearn.method)
        for name in params.unlearn.methods:
            METHODS.get(name).bind(params.method_kwargs(name))
        spec.bind(params.method_kwargs(params.unlearn.method))
        for attack in params.verify.attacks:
            ATTACKS.get(attack)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    except TypeError as exc:  # MethodArgumentError
        raise ConfigError(f"unlearn.methods: {exc}") from None
    unknown = sorted(set(params.gate.tolerances) - set(gate_metrics(params.verify.attacks)))
    if unknown:
        raise ConfigError(
            f"gate.tolerances: unknown metric(s) {', '.join(unknown)}; "
            f"valid: {', '.join(gate_metrics(params.verify.attacks))}"
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_state(project: Project, stage: str) -> dict[str, Any]:
    path = project.state_dir / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"stage {stage!r} has not run yet ({path} missing)") from None


def _write_state(project: Project, stage: str, state: dict[str, Any]) -> dict[str, Any]:
    write_json_atomic(project.state_dir / f"{stage}.json", state)
    return state


def _tensors(arrays: Arrays) -> TensorSet:
    return TensorSet(to_float(arrays.images), torch.as_tensor(arrays.labels))


def _architecture(project: Project, store: SampleStore) -> dict[str, Any]:
    return {"model": project.params.model.name, "in_channels": store.image_shape[0],
            "num_classes": len(store.classes)}


def _device(project: Project) -> str:
    device = project.params.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return device


def _quarantine_path(project: Project, batch_id: str) -> Path:
    return project.quarantine_dir / f"{batch_id}.npz"


def _load_forget(project: Project, batch_ids: list[str]) -> Arrays:
    """Forget samples (train split) of the given batches, from the quarantine."""
    parts = []
    for batch_id in batch_ids:
        path = _quarantine_path(project, batch_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                parts.append(Arrays(data["ids"], data["images"], data["labels"]))
        except FileNotFoundError:
            raise PipelineError(f"forget samples of {batch_id} missing ({path}); re-run prepare") from None
    ids = np.concatenate([p.ids for p in parts])
    _, first = np.unique(ids, return_index=True)  # two batches may name the same sample
    keep = np.sort(first)
    return Arrays(ids[keep], np.concatenate([p.images for p in parts])[keep],
                  np.concatenate([p.labels for p in parts])[keep])


# --------------------------------------------------------------------------- ingest


def run_ingest(project: Project) -> dict[str, Any]:
    """Validate incoming request files; accepted requests become one pending batch.

    Every row of every incoming file ends in exactly one place: the new batch file
    (``data/requests/batches/<batch>.json``) or the rejection log
    (``data/requests/rejected/<ingest>.jsonl``, one line per row with its reason codes).
    Files that cannot be parsed at all are moved to ``rejected/<ingest>/`` with a reason.

    Returns:
        Counts: files, rows, accepted, rejected, rejected_files; and the batch id (or None).
    """
    params = project.params
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(f for f in project.incoming_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    ledger = Ledger(project.ledger_path)
    if not project.ledger_path.exists():
        ledger.save()  # the ledger always exists: prepare and dvc.yaml depend on it
    if not files:
        return _write_state(project, "ingest", {"batch_id": None, "files": 0, "rows": 0,
                                                "accepted": 0, "rejected": 0, "rejected_files": 0})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    ingest_id = f"batch-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{digest.hexdigest()[:8]}"
    parsed = [parse_request_file(f) for f in files]
    requests = [r for p in parsed for r in p.requests]
    source = load_source(params.data)
    known_ids = set(source.ids.tolist())
    deleted = ledger.deleted_ids()
    verdicts = validate_requests(
        requests, known_ids=known_ids, classes=source.classes, deleted_ids=deleted,
        seen_request_ids=ledger.request_ids(), reasons=params.requests.reasons,
        max_ids=params.requests.max_ids_per_request,
    )
    salt = load_or_create_salt(project.salt_path)
    rejected_lines, accepted = [], []
    for verdict in verdicts:
        values = verdict.request.values
        if verdict.valid:
            forget_class = None
            if "forget_class" in values:
                # Class-wise forgetting: every live training sample of the class.
                forget_class = list(source.classes).index(str(values["forget_class"]))
                members = source.ids[(source.labels == forget_class) & (source.splits == "train")]
                sample_ids = sorted(set(members.tolist()) - deleted)
            else:
                sample_ids = sorted(set(values["sample_ids"]))
            accepted.append({
                "request_id": values["request_id"], "sample_ids": sample_ids,
                "forget_class": forget_class,
                "received_at": values["received_at"], "reason": values["reason"],
                "subject_hash": hash_subject(values["subject_ref"], salt),
                "source_file": verdict.request.source_file,
            })
        else:
            request_id = values.get("request_id")
            rejected_lines.append({
                "source_file": verdict.request.source_file, "row": verdict.request.row,
                "request_id": request_id if isinstance(request_id, str) else None,
                "reasons": list(verdict.reasons),
            })
    bad_files = [p for p in parsed if p.problem is not None]
    for p in bad_files:
        rejected_lines.append({"source_file": p.name, "row": None, "request_id": None,
                               "reasons": [p.problem.code], "detail": p.problem.detail[:500]})
    # Write every destination before the ledger (the commit point), then clear the inbox.
    if rejected_lines:
        project.rejected_dir.mkdir(parents=True, exist_ok=True)
        tmp = project.rejected_dir / f".{ingest_id}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in rejected_lines))
        os.replace(tmp, project.rejected_dir / f"{ingest_id}.jsonl")
        if bad_files:
            keep_dir = project.rejected_dir / ingest_id
            keep_dir.mkdir(parents=True, exist_ok=True)
            for p in bad_files:
                shutil.move(project.incoming_dir / p.name, keep_dir / p.name)
    batch_id = None
    if accepted:
        batch_id = ingest_id
        write_json_atomic(project.batches_dir / f"{batch_id}.json",
                          {"batch_id": batch_id, "created_at": _now(), "requests": accepted})
        ledger.add_batch(batch_id, [a["request_id"] for a in accepted],
                         [s for a in accepted for s in a["sample_ids"]], _now(),
                         forget_classes=[a["forget_class"] for a in accepted if a["forget_class"] is not None])
        ledger.save()
    for f in files:
        if f.exists():
            f.unlink()
    counts = {
        "batch_id": batch_id, "files": len(files), "rows": len(requests) + len(bad_files),
        "accepted": len(accepted), "rejected": len(rejected_lines), "rejected_files": len(bad_files),
        "samples": len({s for a in accepted for s in a["sample_ids"]}),
    }
    if counts["rows"] != counts["accepted"] + counts["rejected"]:  # an accounting bug, never input
        raise PipelineError(f"request accounting mismatch: {counts}")
    log.info("ingest: %s", counts)
    return _write_state(project, "ingest", counts)


# --------------------------------------------------------------------------- prepare


def run_prepare(project: Project) -> dict[str, Any]:
    """Materialise the sample store: the source minus every deleted sample.

    Forget samples of pending batches are first copied to ``data/quarantine/`` (local only,
    never pushed), because unlearning and verification need them; they are deleted when a
    verified model without them is promoted.

    Returns:
        Sample counts of the new store.
    """
    params = project.params
    source = load_source(params.data)
    ledger = Ledger(project.ledger_path)
    old_store = SampleStore(project.store_dir) if (project.store_dir / "index.csv").exists() else None
    train_mask = source.splits == "train"
    for batch_id in ledger.pending():
        path = _quarantine_path(project, batch_id)
        if path.exists():
            continue
        wanted = np.isin(source.ids, ledger.batches[batch_id]["sample_ids"]) & train_mask
        ids = source.ids[wanted]
        if old_store is not None and all(i in old_store for i in ids):
            arrays = old_store.load(ids)  # the exact bytes the model was trained on
        else:
            arrays = Arrays(ids, source.images[wanted], source.labels[wanted])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=arrays.ids, images=arrays.images, labels=arrays.labels)
        os.replace(tmp, path)
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size,
                                    ledger.deleted_ids())
    summary = {"num_samples": len(store), "num_train": int(store.meta["num_train"]),
               "num_test": int(store.meta["num_test"]), "deleted_total": len(ledger.deleted_ids()),
               "source": params.data.source}
    log.info("prepare: %s", summary)
    return _write_state(project, "prepare", summary)


# --------------------------------------------------------------------------- train


def _flat_params(params: Params) -> dict[str, Any]:
    out = {"seed": params.seed, "device": params.device, "model": params.model.name,
           "data_source": params.data.source}
    out.update({f"train_{k}": v for k, v in vars(params.train).items()})
    return out


def run_train(project: Project, *, force: bool = False) -> dict[str, Any]:
    """Train the baseline on the store's train split, unless a champion already exists.

    The run logs params, per-epoch metrics, the data version as a dataset input and the Git
    commit; the model is registered and, being the first, becomes ``champion``.

    Args:
        project: The project.
        force: Train and register a new baseline even if a champion exists (it does not
            take the alias from an existing champion).

    Returns:
        The champion version and whether training was skipped.
    """
    import mlflow

    params = project.params
    client = tracking.setup(project)
    champion = tracking.champion_version(project, client)
    if champion is not None and not force:
        return _write_state(project, "train", {"skipped": True, "version": str(champion.version)})
    device = _device(project)
    data_version = dvc_ops.data_version(project)
    store = SampleStore(project.store_dir)
    train, test = store.load_split("train"), store.load_split("test")
    train_t, test_t = _tensors(train), _tensors(test)
    seed_everything(params.seed)
    architecture = _architecture(project, store)
    model = build_model(params.model.name, architecture["in_channels"], architecture["num_classes"])
    recipe = SGDRecipe.from_config(params.train)
    started = time.perf_counter()
    with mlflow.start_run(run_name="baseline") as run:
        mlflow.log_params(_flat_params(params))
        mlflow.set_tags({"stage": "train", "git_commit": dvc_ops.git_commit(project),
                         "data_version": data_version})
        _log_dataset(store, data_version, "training")
        model = train_model(
            model, train_t.images, train_t.labels, recipe, device=device, seed=params.seed,
            on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch),
        )
        seconds = time.perf_counter() - started
        metrics = {"train_acc": accuracy(model, train_t.images, train_t.labels, device=device),
                   "test_acc": accuracy(model, test_t.images, test_t.labels, device=device),
                   "train_seconds": seconds}
        mlflow.log_metrics(metrics)
        version, model_id = tracking.log_model(
            project, model, train_t.images[:1], architecture=architecture,
            tags={"role": "baseline", "method": "train", "verdict": "baseline",
                  "parent_version": "", "data_version": data_version,
                  "data_version_before": "", "data_version_after": data_version,
                  "request_batches": "", "run_id": run.info.run_id,
                  "git_commit": dvc_ops.git_commit(project)},
        )
    if champion is None:
        tracking.move_champion(project, client, version)
    state = {"skipped": False, "version": version, "model_id": model_id, "run_id": run.info.run_id,
             "data_version": data_version, **metrics}
    log.info("train: version %s, test_acc %.4f, %.1fs", version, metrics["test_acc"], seconds)
    return _write_state(project, "train", state)


def _log_dataset(store: SampleStore, data_version: str, context: str) -> None:
    """Record the store as a dataset input: name, DVC hash and schema; never its rows."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame({"label": store.labels, "split": store.splits})
    dataset = mlflow.data.from_pandas(frame, source=str(store.root), name="sample-store",
                                      digest=data_version.replace(".dir", "")[:32])
    mlflow.log_input(dataset, context=context)


# --------------------------------------------------------------------------- unlearn


def _unlearning_data(project: Project, store: SampleStore, forget: Arrays) -> UnlearningData:
    params = project.params
    retain = store.load_split("train")
    architecture = _architecture(project, store)
    return UnlearningData(
        forget=_tensors(forget), retain=_tensors(retain), num_classes=architecture["num_classes"],
        train_recipe=SGDRecipe.from_config(params.train),
        model_factory=lambda: build_model(params.model.name, architecture["in_channels"],
                                          architecture["num_classes"]),
    )


def run_unlearn(project: Project) -> dict[str, Any]:
    """Make the champion forget every pending batch with the configured method.

    The result is saved to ``data/models/candidate.pt`` and an MLflow run (which verify and
    promote continue) records method, parameters, counts and lineage. A batch that names only
    test-split samples needs no unlearning (no model saw them) and is completed here.

    Returns:
        The run id, method, batches and counts; or the reason nothing was done.
    """
    import mlflow
    from mlflow.entities import LoggedModelInput

    params = project.params
    ledger = Ledger(project.ledger_path)
    pending = ledger.pending()
    if not pending:
        return _write_state(project, "unlearn", {"status": "nothing_pending"})
    client = tracking.setup(project)
    champion = tracking.champion_version(project, client)
    if champion is None:
        raise PipelineError("no champion model in the registry; run the train stage first")
    store = SampleStore(project.store_dir)
    forget = _load_forget(project, pending)
    data_version = dvc_ops.data_version(project)
    if len(forget) == 0:
        for batch_id in pending:
            ledger.set_status(batch_id, Ledger.COMPLETED, {"at": _now(), "outcome": "data_only",
                                                           "data_version": data_version})
            _quarantine_path(project, batch_id).unlink(missing_ok=True)
        ledger.save()
        return _write_state(project, "unlearn", {"status": "data_only", "batches": pending})
    device = _device(project)
    data = _unlearning_data(project, store, forget)
    original = tracking.load_model(project, client, str(champion.version))
    method = params.unlearn.method
    kwargs = params.method_kwargs(method)
    with mlflow.start_run(run_name=f"unlearn-{method}") as run:
        mlflow.log_params({"method": method, "seed": params.seed, "n_forget": len(forget),
                           "n_retain": len(data.retain), "parent_version": str(champion.version),
                           **{f"method_{k}": v for k, v in kwargs.items()}})
        mlflow.set_tags({
            "stage": "unlearn", "method": method, "request_batches": ",".join(pending),
            "forget_ids_digest": hash_ids(forget.ids.tolist()),
            "data_version_before": champion.tags.get("data_version", ""),
            "data_version_after": data_version, "git_commit": dvc_ops.git_commit(project),
        })
        _log_dataset(store, data_version, "retain")
        if champion.tags.get("model_id"):
            mlflow.log_input(model=LoggedModelInput(model_id=champion.tags["model_id"]))
        started = time.perf_counter()
        model = run_method(method, original, data, device=device, seed=params.seed, kwargs=kwargs)
        seconds = time.perf_counter() - started
        mlflow.log_metric("unlearn_seconds", seconds)
    project.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = project.models_dir / ".candidate.pt.tmp"
    torch.save(model.cpu().state_dict(), tmp)
    os.replace(tmp, project.models_dir / "candidate.pt")
    state = {
        "status": "unlearned", "run_id": run.info.run_id, "method": method,
        "parent_version": str(champion.version), "batches": pending,
        "data_version_before": champion.tags.get("data_version", ""),
        "data_version_after": data_version, "n_forget": len(forget), "n_retain": len(data.retain),
        "unlearn_seconds": seconds, "forget_classes": ledger.forget_classes(pending),
    }
    log.info("unlearn: %s forgot %d samples in %.1fs", method, len(forget), seconds)
    return _write_state(project, "unlearn", state)


# --------------------------------------------------------------------------- verify


def _reference_model(project: Project, store: SampleStore, data: UnlearningData,
                     data_version: str) -> tuple[torch.nn.Module, float, bool]:
    """The retrained reference for this data version: cached on disk, trained if absent."""
    params = project.params
    key = hashlib.sha256(
        json.dumps([data_version, params.seed, vars(params.train), params.model.name]).encode()
    ).hexdigest()[:16]
    path = project.models_dir / f"reference-{key}.pt"
    architecture = _architecture(project, store)
    model = build_model(params.model.name, architecture["in_channels"], architecture["num_classes"])
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), 0.0, True
    started = time.perf_counter()
    model = run_method("retrain", model, data, device=_device(project), seed=params.seed)
    seconds = time.perf_counter() - started
    tmp = path.with_suffix(".tmp")
    torch.save(model.cpu().state_dict(), tmp)
    os.replace(tmp, path)
    return model, seconds, False


def run_verify(project: Project) -> dict[str, Any]:
    """Compare original, unlearned and retrained models and apply the two-sided gate.

    Metrics: accuracy on forget/retain/test, and each configured attack's forget-vs-test
    ROC-AUC (with a bootstrap interval). The verdict and every number behind it are logged on
    the unlearned model's MLflow run and written to ``data/reports/verification.json``.

    Returns:
        The report.
    """
    import mlflow

    params = project.params
    unlearn_state = _read_state(project, "unlearn")
    report_path = project.reports_dir / "verification.json"
    if unlearn_state.get("status") != "unlearned":
        report = {"status": "skipped", "reason": unlearn_state.get("status")}
        write_json_atomic(report_path, report)
        return report
    client = tracking.setup(project)
    device = _device(project)
    store = SampleStore(project.store_dir)
    forget = _load_forget(project, unlearn_state["batches"])
    data = _unlearning_data(project, store, forget)
    test = store.load_split("test")
    forget_classes = unlearn_state.get("forget_classes") or []
    if forget_classes:
        # Class-wise forgetting: compare the forget set with unseen samples of the same classes,
        # or the attack would learn "class", not "membership" (mia-and-peers.md section 2).
        test = Arrays(*(a[np.isin(test.labels, forget_classes)] for a in (test.ids, test.images, test.labels)))
    sets = EvalSets(data.forget, data.retain, _tensors(test))
    original = tracking.load_model(project, client, unlearn_state["parent_version"])
    candidate = data.model_factory()
    try:
        candidate.load_state_dict(torch.load(project.models_dir / "candidate.pt",
                                             map_location="cpu", weights_only=True))
    except (FileNotFoundError, RuntimeError, EOFError) as exc:
        raise PipelineError(f"candidate model is missing or corrupt: {exc}; re-run unlearn") from None
    reference, retrain_seconds, cached = _reference_model(
        project, store, data, unlearn_state["data_version_after"])
    evaluate = lambda m: evaluate_model(  # noqa: E731
        m, sets, attacks=params.verify.attacks, device=device, seed=params.seed,
        bootstrap=params.verify.bootstrap)
    started = time.perf_counter()
    results = {"original": evaluate(original), "retrain": evaluate(reference.to(device))}
    try:
        results["unlearned"] = evaluate(candidate.to(device))
    except DivergedModelError as exc:
        # A diverged model is a verdict, not a crash: every metric is NaN and the gate fails.
        log.warning("verify: %s", exc)
        results["unlearned"] = {k: float("nan") for k in results["retrain"]}
    attack_seconds = time.perf_counter() - started
    gate = apply_gate(results["unlearned"], results["retrain"], params.gate.tolerances)
    report = {
        "status": "verified", "verdict": gate.verdict, "failures": gate.failures(),
        "checks": [{"metric": c.metric, "unlearned": c.candidate, "retrain": c.reference,
                    "gap": c.gap, "tolerance": c.tolerance, "passed": c.passed} for c in gate.checks],
        "models": results, "reference_cached": cached, "retrain_seconds": retrain_seconds,
        "attack_seconds": attack_seconds, "run_id": unlearn_state["run_id"],
        "forget_classes": forget_classes,
        "n_forget": len(sets.forget), "n_retain": len(sets.retain), "n_test": len(sets.test),
    }
    write_json_atomic(report_path, report)
    with mlflow.start_run(run_id=unlearn_state["run_id"]):
        mlflow.log_metrics(results["unlearned"])
        for role in ("original", "retrain"):
            mlflow.log_metrics({f"{role}.{k}": v for k, v in results[role].items()})
        mlflow.log_metrics({f"gap.{c.metric}": c.gap for c in gate.checks})
        mlflow.log_metrics({"retrain_seconds": retrain_seconds, "attack_seconds": attack_seconds})
        mlflow.set_tags({"verdict": gate.verdict, "gate_failures": "; ".join(gate.failures())})
        mlflow.log_artifact(str(report_path), artifact_path="verification")
    log.info("verify: verdict %s", gate.verdict)
    return report


# --------------------------------------------------------------------------- promote


def run_promote(project: Project) -> dict[str, Any]:
    """Register the unlearned model with its lineage; move ``champion`` only if it passed.

    A passing model takes ``champion`` (the old one gets ``previous``) and its batches are
    completed, which deletes their quarantined forget samples. A failing model is registered
    with its verdict and no alias; the champion does not move and the batches stay pending.
    Re-running after a crash reuses the version already registered for the same run.

    Returns:
        Version, verdict, aliases.
    """
    import mlflow

    report = json.loads((project.reports_dir / "verification.json").read_text())
    if report.get("status") != "verified":
        return _write_state(project, "promote", {"status": "nothing_to_promote"})
    unlearn_state = _read_state(project, "unlearn")
    if report["run_id"] != unlearn_state["run_id"]:
        raise PipelineError("verification report belongs to another unlearning run; re-run verify")
    client = tracking.setup(project)
    store = SampleStore(project.store_dir)
    existing = tracking.find_version_by_tag(project, client, "run_id", unlearn_state["run_id"])
    if existing is not None:
        version = str(existing.version)
    else:
        architecture = _architecture(project, store)
        model = build_model(architecture["model"], architecture["in_channels"], architecture["num_classes"])
        model.load_state_dict(torch.load(project.models_dir / "candidate.pt", map_location="cpu",
                                         weights_only=True))
        example = to_float(store.load(store.ids[:1]).images)
        metrics = report["models"]["unlearned"]
        with mlflow.start_run(run_id=unlearn_state["run_id"]):
            version, _ = tracking.log_model(project, model, example, architecture=architecture, tags={
                "role": "unlearned", "method": unlearn_state["method"],
                "verdict": report["verdict"], "gate_failures": "; ".join(report["failures"]),
                "parent_version": unlearn_state["parent_version"],
                "data_version": unlearn_state["data_version_after"],
                "data_version_before": unlearn_state["data_version_before"],
                "data_version_after": unlearn_state["data_version_after"],
                "request_batches": ",".join(unlearn_state["batches"]),
                "run_id": unlearn_state["run_id"], "git_commit": dvc_ops.git_commit(project),
                **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()},
            })
    passed = report["verdict"] == "pass"
    previous = None
    ledger = Ledger(project.ledger_path)
    if passed:
        previous = tracking.move_champion(project, client, version)
    for batch_id in unlearn_state["batches"]:
        if ledger.batches.get(batch_id, {}).get("status") != Ledger.PENDING:
            continue
        note = {"at": _now(), "outcome": "promoted" if passed else "verification_failed",
                "model_version": version}
        ledger.set_status(batch_id, Ledger.COMPLETED if passed else Ledger.PENDING, note)
    ledger.save()
    if passed:
        for batch_id in unlearn_state["batches"]:
            _quarantine_path(project, batch_id).unlink(missing_ok=True)
    aliases = client.get_registered_model(tracking.model_name(project)).aliases
    state = {"status": "promoted" if passed else "rejected", "version": version,
             "verdict": report["verdict"], "previous_champion": previous,
             "aliases": {k: str(v) for k, v in aliases.items()}}
    log.info("promote: version %s %s", version, state["status"])
    return _write_state(project, "promote", state)


STAGE_FUNCTIONS = {
    "ingest": run_ingest, "prepare": run_prepare, "train": run_train,
    "unlearn": run_unlearn, "verify": run_verify, "promote": run_promote,
}
