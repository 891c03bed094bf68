"""The pipeline stages: the one implementation that Prefect tasks and ``dvc repro`` both run.

Each ``run_<stage>(project)`` reads its inputs from the project directory / registry, writes
its outputs, records a small JSON state file under ``data/state/`` (what ``dvc.yaml`` tracks),
and returns a summary dict. Stages never log raw forget-set data or subject identifiers: logs
and MLflow hold counts, hashed id digests and batch ids only.
"""

from __future__ import annotations

import functools
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

from tasks import dvc_ops, reporting, tracking
from tasks.project import PipelineError, Project
from tasks.validation import validate_requests
from unlearn.attacks import ATTACKS
from unlearn.attacks.signals import SignalCache
from unlearn.config import ConfigError, Params
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays
from unlearn.methods import METHODS, TensorSet, UnlearningData, run_method
from unlearn.metrics import paired_bootstrap_difference
from unlearn.models import MODELS, build_model
from unlearn.references import ReferenceBank, ReferencePlan, members_digest
from unlearn.requests import (
    Ledger,
    hash_ids,
    hash_subject,
    load_or_create_salt,
    parse_request_file,
    write_json_atomic,
)
from unlearn.training import SGDRecipe, accuracy, seed_everything, seeded_model, to_float, train_model
from unlearn.verification import (
    DivergedModelError,
    EvalSets,
    SuiteResult,
    apply_gate,
    attack_suite,
    is_gate_metric,
    model_evidence,
)

log = logging.getLogger("unlearn.pipeline")

STAGES = ("ingest", "prepare", "train", "references", "unlearn", "verify", "promote")


# --------------------------------------------------------------------------- helpers


def check_params(params: Params) -> None:
    """Check every name in params.yaml against the registries, before any work starts.

    Raises:
        ConfigError: On an unknown method, attack, model or source name, a bad method
            keyword argument, or a gate tolerance for a metric that is not computed.
    """
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
    for attack in params.verify.attacks:
        requires = ATTACKS.get(attack).requires
        if requires & {"in_references", "shadows"}:
            needs = ("shadow unlearning pipelines" if "shadows" in requires
                     else "reference models trained on the forget samples, which deletion forbids")
            raise ConfigError(
                f"verify.attacks: {attack!r} cannot run at promotion time: it needs {needs}; "
                "run it in an audit (benchmarks/verification.py). "
                f"Promotion-time attacks: {', '.join(promotion_attacks())}")
        if "references" in requires and params.verify.references.count < 2:
            raise ConfigError(f"verify.attacks: {attack!r} needs reference models; set verify.references.count >= 2")
    for name in params.verify.attack_options:
        if name not in params.verify.attacks:
            raise ConfigError(f"verify.attack_options.{name}: not in verify.attacks")
    unknown = sorted(name for name in params.gate.tolerances if not is_gate_metric(name, params.verify.attacks))
    if unknown:
        raise ConfigError(
            f"gate.tolerances: unknown metric(s) {', '.join(unknown)}; valid: forget_acc, retain_acc, test_acc "
            f"and mia.<attack>.<metric> for an attack in verify.attacks ({', '.join(params.verify.attacks)}), "
            "metric one of auc, balanced_accuracy, tpr_at_fpr_<f>, tpr_at_lowest_fpr or an attack's extra number"
        )


def promotion_attacks() -> list[str]:
    """Attacks the verify stage can run: population attacks and offline reference attacks."""
    return [name for name in ATTACKS.names() if not ATTACKS.get(name).requires & {"in_references", "shadows"}]


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
    deleted = ledger.deleted_ids()
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size, deleted)
    # Models trained on data that is now deleted are never used again: reference models that
    # trained on a deleted sample are retired (tombstoned), and exact retrains of an older data
    # version are removed.
    retired = ReferenceBank(project.references_dir).retire_containing(deleted, batches=ledger.pending())
    for ref_id in retired:
        log.info("prepare: retired reference %s (trained on deleted samples)", ref_id)
    live_key = _retrained_key(project, store.split_ids("train"))
    for path in project.models_dir.glob("retrained-*.pt"):
        if path.stem != f"retrained-{live_key}":
            path.unlink()
    summary = {"num_samples": len(store), "num_train": int(store.meta["num_train"]),
               "num_test": int(store.meta["num_test"]), "deleted_total": len(deleted),
               "source": params.data.source, "references_retired": retired}
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


# --------------------------------------------------------------------------- references


def recipe_key(project: Project, store: SampleStore) -> str:
    """Identity of the training recipe: reference models must share the deployed model's."""
    params = project.params
    return hashlib.sha256(json.dumps(
        [vars(params.train), _architecture(project, store), "reference-v1"], sort_keys=True).encode()
    ).hexdigest()[:16]


def needs_references(params: Params) -> bool:
    """True when a configured attack needs reference models."""
    return any(ATTACKS.get(a).requires & {"references"} for a in params.verify.attacks)


def use_batched(project: Project) -> bool:
    """Whether reference models are trained as one batched (vmapped) model."""
    mode = project.params.verify.references.batched
    return mode == "always" or (mode == "auto" and project.params.device.startswith("cuda"))


def plan_references(project: Project) -> list[ReferencePlan]:
    """Reference models to train so that ``verify.references.count`` usable ones exist.

    Nothing is planned unless a batch is pending and a configured attack needs references.
    Live references trained with another recipe are retired first (they could never be used).
    """
    params = project.params
    if not needs_references(params) or not Ledger(project.ledger_path).pending():
        return []  # trained when a request needs them: the next deletion would retire most of them
    store = SampleStore(project.store_dir)
    bank = ReferenceBank(project.references_dir)
    key = recipe_key(project, store)
    for ref_id in bank.retire_stale(key):
        log.info("references: retired %s (recipe changed)", ref_id)
    return bank.plan(store.split_ids("train"), count=params.verify.references.count, recipe_key=key,
                     seed=params.seed)


def train_references(project: Project, plans: list[ReferencePlan]) -> list[dict[str, Any]]:
    """Train planned reference models: one by one, or as one batched (vmapped) model.

    Args:
        project: The project.
        plans: What to train (from :func:`plan_references`).

    Returns:
        Per plan, ``{"state": state_dict, "seconds": training time}``.
    """
    if not plans:
        return []
    params = project.params
    store = SampleStore(project.store_dir)
    device = _device(project)
    architecture = _architecture(project, store)
    train = store.load_split("train")
    images, labels = to_float(train.images), torch.as_tensor(train.labels)
    position = {sample_id: i for i, sample_id in enumerate(train.ids.tolist())}
    indices = [np.array([position[i] for i in plan.members.tolist()], dtype=np.int64) for plan in plans]
    factory = lambda: build_model(params.model.name, architecture["in_channels"],  # noqa: E731
                                  architecture["num_classes"])
    recipe = SGDRecipe.from_config(params.train)
    started = time.perf_counter()
    if use_batched(project) and len(plans) > 1:
        from unlearn.batched import train_models_batched

        models = train_models_batched(factory, images, labels, indices, recipe,
                                      seeds=[p.seed for p in plans], device=device)
        each = (time.perf_counter() - started) / len(plans)
        return [{"state": m.cpu().state_dict(), "seconds": each} for m in models]
    out = []
    for plan, index in zip(plans, indices, strict=True):
        begun = time.perf_counter()
        model = train_model(seeded_model(factory, plan.seed), images[index], labels[index], recipe,
                            device=device, seed=plan.seed)
        out.append({"state": model.cpu().state_dict(), "seconds": time.perf_counter() - begun})
    return out


def register_references(project: Project, plans: list[ReferencePlan],
                        trained: list[dict[str, Any]]) -> dict[str, Any]:
    """Store trained references with their lineage and write the stage state."""
    store = SampleStore(project.store_dir)
    bank = ReferenceBank(project.references_dir)
    key = recipe_key(project, store)
    data_version = dvc_ops.data_version(project) if (project.root / "dvc.lock").exists() else ""
    git = dvc_ops.git_commit(project)
    for plan, result in zip(plans, trained, strict=True):
        bank.add(plan, result["state"], recipe_key=key, data_version=data_version,
                 extra={"train_seconds": round(float(result["seconds"]), 3), "git_commit": git,
                        "batched": use_batched(project) and len(plans) > 1})
    usable = [r for r in bank.usable(key, store.split_ids("train"))
              if r.pair < project.params.verify.references.count // 2]
    state = {"trained": [p.ref_id for p in plans], "usable": [r.ref_id for r in usable],
             "retired_total": sum(r.status != "live" for r in bank.records.values()),
             "train_seconds": round(sum(float(r["seconds"]) for r in trained), 3), "recipe_key": key}
    log.info("references: trained %d, usable %d", len(plans), len(usable))
    return _write_state(project, "references", state)


def run_references(project: Project) -> dict[str, Any]:
    """Make sure ``verify.references.count`` usable reference models exist.

    The one implementation behind ``unlearn stage references`` and ``dvc repro``; the Prefect
    flow runs the same three steps (plan, train, register) and fans the training out over its
    task runner.

    Returns:
        The stage state: trained and usable reference ids, training seconds.
    """
    plans = plan_references(project)
    return register_references(project, plans, train_references(project, plans))


# --------------------------------------------------------------------------- verify


def _retrained_key(project: Project, train_ids: np.ndarray) -> str:
    """Cache key of the exact retrain: its training samples, seed and recipe."""
    params = project.params
    return hashlib.sha256(json.dumps(
        [members_digest(train_ids), params.seed, vars(params.train), params.model.name]).encode()).hexdigest()[:16]


def _retrained_model(project: Project, store: SampleStore, data: UnlearningData) -> tuple[torch.nn.Module, float, bool]:
    """The exactly retrained model for the live training set (the gate's target): cached, or trained."""
    params = project.params
    path = project.models_dir / f"retrained-{_retrained_key(project, store.split_ids('train'))}.pt"
    model = data.model_factory()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), 0.0, True
    started = time.perf_counter()
    model = run_method("retrain", model, data, device=_device(project), seed=params.seed)
    seconds = time.perf_counter() - started
    project.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.cpu().state_dict(), tmp)
    os.replace(tmp, path)
    return model, seconds, False


def run_verify(project: Project) -> dict[str, Any]:
    """Attack the original, unlearned and retrained models and apply the two-sided gate.

    Metrics per model: accuracy on forget/retain/test and, for each configured attack, the
    forget-vs-test ROC-AUC, best balanced accuracy and TPR at low FPRs, each with a bootstrap
    interval (a TPR the test set is too small for is refused and listed). Reference attacks
    use the live reference models (see :mod:`unlearn.references`); signals are cached by
    sample id. The verdict, every number, the ROC and histogram plots are logged on the
    unlearned model's MLflow run and written under ``data/reports/``.

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
        write_json_atomic(project.reports_dir / "metrics.json", {"verified": 0})
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
    retain = store.load_split("train")
    sets = EvalSets(_tensors(forget), _tensors(retain), _tensors(test),
                    ids={"forget": forget.ids, "retain": retain.ids, "test": test.ids})
    original = tracking.load_model(project, client, unlearn_state["parent_version"])
    candidate = data.model_factory()
    try:
        candidate.load_state_dict(torch.load(project.models_dir / "candidate.pt",
                                             map_location="cpu", weights_only=True))
    except (FileNotFoundError, RuntimeError, EOFError) as exc:
        raise PipelineError(f"candidate model is missing or corrupt: {exc}; re-run unlearn") from None
    retrained, retrain_seconds, cached = _retrained_model(project, store, data)
    verify = params.verify
    cache = SignalCache(project.signals_dir)
    evidence = functools.partial(model_evidence, sets=sets, device=device, augmentations=verify.augmentations,
                                 cache=cache)
    suite = functools.partial(attack_suite, attacks=verify.attacks, attack_options=verify.attack_options,
                              fprs=verify.fprs, min_negatives=verify.min_negatives,
                              bootstrap=verify.bootstrap, seed=params.seed)
    started = time.perf_counter()
    refs, ref_ids = [], []
    if needs_references(params):
        bank = ReferenceBank(project.references_dir)
        usable = [r for r in bank.usable(recipe_key(project, store), retain.ids)
                  if r.pair < verify.references.count // 2]
        if len(usable) < verify.references.count:
            raise PipelineError(f"{len(usable)} usable reference models but verify.references.count is "
                                f"{verify.references.count}; run the references stage first")
        for record in usable:
            model = data.model_factory()
            model.load_state_dict(bank.load_state(record.ref_id))
            refs.append(evidence(model.to(device), with_retain=False))
            ref_ids.append(record.ref_id)
    proofs = {"original": evidence(original.to(device)), "retrain": evidence(retrained.to(device))}
    outcome = {role: suite(proofs[role], refs) for role in proofs}
    try:
        proofs["unlearned"] = evidence(candidate.to(device))
        outcome["unlearned"] = suite(proofs["unlearned"], refs)
    except DivergedModelError as exc:
        # A diverged model is a verdict, not a crash: every metric is NaN and the gate fails.
        log.warning("verify: %s", exc)
        outcome["unlearned"] = SuiteResult({k: float("nan") for k in outcome["retrain"].metrics}, {}, {})
    attack_seconds = time.perf_counter() - started
    results = {role: r.metrics for role, r in outcome.items()}
    refused = {role: r.refused for role, r in outcome.items()}
    gate = apply_gate(results["unlearned"], results["retrain"], params.gate.tolerances,
                      refused={**refused["retrain"], **refused["unlearned"]})
    plots = reporting.verification_plots(project.plots_dir, {r: o.scores for r, o in outcome.items()}, proofs)
    report = {
        "status": "verified", "verdict": gate.verdict, "failures": gate.failures(),
        "checks": [{"metric": c.metric, "unlearned": c.candidate, "retrain": c.reference,
                    "gap": c.gap, "gap_ci": _gap_interval(c.metric, outcome, params), "tolerance": c.tolerance,
                    "passed": c.passed, "note": c.note} for c in gate.checks],
        "models": results, "refused": refused, "reference_cached": cached, "retrain_seconds": retrain_seconds,
        "attack_seconds": attack_seconds, "run_id": unlearn_state["run_id"],
        "forget_classes": forget_classes, "reference_models": ref_ids, "augmentations": verify.augmentations,
        "n_forget": len(forget), "n_retain": len(retain), "n_test": len(test),
    }
    write_json_atomic(report_path, report)
    # The compact numbers `dvc metrics show/diff` compare across runs: gate metrics and attack AUCs.
    shown = [m for m in results["retrain"] if m in params.gate.tolerances or m.endswith(".auc")]
    write_json_atomic(project.reports_dir / "metrics.json", {
        "verified": 1, "verdict_pass": int(gate.passed),
        **{role: {m: results[role].get(m) for m in shown} for role in ("original", "unlearned", "retrain")}})
    with mlflow.start_run(run_id=unlearn_state["run_id"]):
        mlflow.log_metrics(_finite(results["unlearned"]))
        for role in ("original", "retrain"):
            mlflow.log_metrics({f"{role}.{k}": v for k, v in _finite(results[role]).items()})
        mlflow.log_metrics(_finite({f"gap.{c.metric}": c.gap for c in gate.checks}))
        mlflow.log_metrics({"retrain_seconds": retrain_seconds, "attack_seconds": attack_seconds})
        mlflow.set_tags({"verdict": gate.verdict, "gate_failures": "; ".join(gate.failures()),
                         "reference_models": ",".join(ref_ids)})
        mlflow.log_artifact(str(report_path), artifact_path="verification")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="verification/plots")
    log.info("verify: verdict %s", gate.verdict)
    return report


def _gap_interval(metric: str, outcome: dict[str, SuiteResult], params: Params) -> list[float] | None:
    """Paired bootstrap interval of unlearned - retrain for an attack's AUC (same samples, both models)."""
    parts = metric.split(".")
    if len(parts) != 3 or parts[2] != "auc" or parts[1] not in outcome["unlearned"].scores:
        return None
    mine, theirs = outcome["unlearned"].scores[parts[1]], outcome["retrain"].scores[parts[1]]
    if len(mine["member"]) != len(theirs["member"]) or len(mine["nonmember"]) != len(theirs["nonmember"]):
        return None  # an attack that subsamples differently per model has no sample pairing
    _, low, high = paired_bootstrap_difference(
        mine["member"], mine["nonmember"], theirs["member"], theirs["nonmember"], metric="auc",
        resamples=max(params.verify.bootstrap, 1), seed=params.seed)
    return [low, high]


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow rejects nothing, but NaN metrics make its UI charts useless: keep finite ones."""
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


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
        deleted_now = set()
        for batch_id in unlearn_state["batches"]:
            _quarantine_path(project, batch_id).unlink(missing_ok=True)
            deleted_now |= set(ledger.batches[batch_id]["sample_ids"])
        # Cached signals of the deleted samples are derived from their data: drop them too.
        SignalCache(project.signals_dir).drop_ids(deleted_now)
    aliases = client.get_registered_model(tracking.model_name(project)).aliases
    state = {"status": "promoted" if passed else "rejected", "version": version,
             "verdict": report["verdict"], "previous_champion": previous,
             "aliases": {k: str(v) for k, v in aliases.items()}}
    log.info("promote: version %s %s", version, state["status"])
    return _write_state(project, "promote", state)


STAGE_FUNCTIONS = {
    "ingest": run_ingest, "prepare": run_prepare, "train": run_train,
    "references": run_references, "unlearn": run_unlearn, "verify": run_verify, "promote": run_promote,
}
