"""The pipeline stages: the one implementation that Prefect tasks and ``dvc repro`` both run.

Each ``run_<stage>(project)`` reads its inputs from the project directory / registry, writes
its outputs, records a small JSON state file under ``data/state/`` (what ``dvc.yaml`` tracks),
and returns a summary dict. Stages never log raw forget-set data or subject identifiers: logs
and MLflow hold counts, hashed id digests and batch ids only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks import audit, dvc_ops, progress, reporting, tracking
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
    GateResult,
    ModelEvidence,
    SuiteResult,
    apply_gate,
    attack_suite,
    is_gate_metric,
    model_evidence,
)

log = logging.getLogger("unlearn.pipeline")

# The pipeline, in order. "verify" runs inside "unlearn" (once per escalation attempt) and stays
# available on its own to re-verify the latest attempt.
STAGES = ("ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")


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
        for name in params.unlearn.methods:
            METHODS.get(name).bind(params.method_kwargs(name))
        for name in params.unlearn.ladder:
            METHODS.get(name).bind(params.method_kwargs(name))
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
    """Validate incoming request files and route every row; accepted requests become one pending batch.

    Every row of every incoming file ends in exactly one place:

    * the new batch (``data/requests/batches/<batch>.json``): valid requests that delete at
      least one sample no earlier batch deleted; a request keeps only those ids, with
      ``already_deleted_count`` and ``covered_by`` for the rest;
    * the acknowledgement log (``data/requests/acknowledged/<ingest>.jsonl``, and the ledger):
      valid requests that delete nothing new, a repeat of a request id with the same content
      (``duplicate``, with the batch that holds the original) or a request whose samples are
      all deleted already (``already_deleted``, with the batches that deleted them);
    * the rejection log (``data/requests/rejected/<ingest>.jsonl``, reason codes and a
      detail): invalid rows, a request id reused for different content
      (``request_id_conflict``), and one line per file that could not be parsed at all.

    An unparseable file is recorded by its sanitised name, size and sha256 and then deleted,
    like every processed file: it may hold subject references, which are stored nowhere but
    as salted hashes. Symbolic links in the inbox are removed without being followed.

    Returns:
        Counts: files, rows, accepted, acknowledged, rejected, rejected_files, samples; and the
        batch id (or None).
    """
    from tasks.validation import loggable_request_id
    from unlearn.requests import (
        RequestRouter,
        content_digest,
        sanitize_file_name,
        skipped_in_inbox,
        write_jsonl_atomic,
    )

    params = project.params
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    with os.scandir(project.incoming_dir) as scan:  # DirEntry type checks do not follow symlinks
        entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in scan if not skipped_in_inbox(e.name))
    for name, _ in (e for e in entries if e[1]):
        log.warning("ingest: ignoring folder %s in the inbox (request files only)", sanitize_file_name(name))
    files = [project.incoming_dir / name for name, is_dir in entries if not is_dir]
    ledger = Ledger(project.ledger_path)
    if not project.ledger_path.exists():
        ledger.save()  # the ledger always exists: later stages read it
    _write_deletions(project, ledger)
    if not files:
        return _write_state(project, "ingest", {"batch_id": None, "files": 0, "rows": 0, "accepted": 0,
                                                "acknowledged": 0, "rejected": 0, "rejected_files": 0, "samples": 0})
    parsed = [parse_request_file(f) for f in files]  # reads each regular file once, never a link's target
    digest = hashlib.sha256()
    for f, p in zip(files, parsed, strict=True):
        digest.update(os.fsencode(f.name) + b"\0" + (p.sha256 or "-").encode())
    ingest_id = f"batch-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{digest.hexdigest()[:8]}"
    requests = [r for p in parsed for r in p.requests]
    source = load_source(params.data)
    verdicts = validate_requests(
        requests, known_ids=set(source.ids.tolist()), classes=source.classes,
        reasons=params.requests.reasons, max_ids=params.requests.max_ids_per_request,
    )
    salt = load_or_create_salt(project.salt_path)
    router = RequestRouter(ledger, ingest_id)
    now = _now()
    rejected_lines, acknowledged, accepted = [], [], []
    for verdict in verdicts:
        values = verdict.request.values
        where = {"source_file": verdict.request.source_file, "row": verdict.request.row}
        if not verdict.valid:
            rejected_lines.append({**where, "request_id": loggable_request_id(values.get("request_id")),
                                   "reasons": list(verdict.reasons), "detail": verdict.detail})
            continue
        request_id, forget_class = values["request_id"], None
        if "forget_class" in values:
            # Class-wise forgetting: every training sample of the class (the router drops deleted ones).
            class_name = str(values["forget_class"])
            forget_class = list(source.classes).index(class_name)
            wanted = source.ids[(source.labels == forget_class) & (source.splits == "train")].tolist()
            content = content_digest(forget_class=class_name)
        else:
            wanted = values["sample_ids"]
            content = content_digest(sample_ids=wanted)
        routing = router.route(request_id, content, wanted)
        if routing.destination == "rejected":
            rejected_lines.append({**where, "request_id": request_id, "reasons": [routing.outcome],
                                   "detail": f"{routing.outcome}: {routing.detail}"})
            continue
        subject_hash = hash_subject(values["subject_ref"], salt)
        if routing.destination == "acknowledged":
            record = {"outcome": routing.outcome, "at": now, "ingest_id": ingest_id, "subject_hash": subject_hash,
                      "content_digest": content, "covered_by": list(routing.covered_by), "detail": routing.detail}
            if routing.outcome == "duplicate":
                record["batch_id"] = routing.batch_id
            acknowledged.append({**where, "request_id": request_id, **record})
            continue
        accepted.append({
            "request_id": request_id, "sample_ids": list(routing.sample_ids), "forget_class": forget_class,
            "received_at": values["received_at"], "reason": values["reason"], "subject_hash": subject_hash,
            "source_file": verdict.request.source_file, "content_digest": content,
            "already_deleted_count": routing.already_deleted_count, "covered_by": list(routing.covered_by),
        })
    bad_files = [p for p in parsed if p.problem is not None]
    for p in bad_files:
        rejected_lines.append({"source_file": p.name, "row": None, "request_id": None, "reasons": [p.problem.code],
                               "detail": f"{p.problem.code}: {p.problem.detail}"[:500],
                               "file_size": p.size, "file_sha256": p.sha256})
    # Write every destination before the ledger (the commit point), then clear the inbox.
    if rejected_lines:
        write_jsonl_atomic(project.rejected_dir / f"{ingest_id}.jsonl", rejected_lines)
    if acknowledged:
        write_jsonl_atomic(project.acknowledged_dir / f"{ingest_id}.jsonl", acknowledged)
    batch_id = None
    if accepted:
        batch_id = ingest_id
        write_json_atomic(project.batches_dir / f"{batch_id}.json",
                          {"batch_id": batch_id, "created_at": now, "requests": accepted})
        ledger.add_batch(batch_id, [a["request_id"] for a in accepted],
                         [s for a in accepted for s in a["sample_ids"]], now,
                         forget_classes=[a["forget_class"] for a in accepted if a["forget_class"] is not None],
                         request_digests={a["request_id"]: a["content_digest"] for a in accepted})
    for line in acknowledged:
        ledger.acknowledge(line["request_id"], {k: v for k, v in line.items() if k not in ("request_id", "row")})
    if batch_id is not None:
        _mark_step(ledger, [batch_id], "validated")
    if accepted or acknowledged:
        ledger.save()
    _write_deletions(project, ledger)
    # The audit trail: request ids, salted subject hashes and counts, never sample ids.
    for a in accepted:
        audit.record(project, "request.accepted", request_id=a["request_id"], batch_id=batch_id,
                     subject_hash=a["subject_hash"], samples=len(a["sample_ids"]),
                     already_deleted=a["already_deleted_count"], reason=a["reason"])
    for line in acknowledged:
        audit.record(project, "request.acknowledged", request_id=line["request_id"], outcome=line["outcome"],
                     subject_hash=line["subject_hash"], covered_by=line["covered_by"])
    for line in rejected_lines:
        audit.record(project, "request.rejected", request_id=line["request_id"], reasons=line["reasons"])
    for f in files:
        f.unlink(missing_ok=True)  # a symlink: removes the link, never its target
    counts = {
        "batch_id": batch_id, "files": len(files), "rows": len(requests) + len(bad_files),
        "accepted": len(accepted), "acknowledged": len(acknowledged), "rejected": len(rejected_lines),
        "rejected_files": len(bad_files), "samples": len({s for a in accepted for s in a["sample_ids"]}),
    }
    if counts["rows"] != counts["accepted"] + counts["rejected"] + counts["acknowledged"]:  # a bug, never input
        raise PipelineError(f"request accounting mismatch: {counts}")
    log.info("ingest: %s", counts)
    return _write_state(project, "ingest", counts)


def _write_deletions(project: Project, ledger: Ledger) -> None:
    """The data-defining part of the ledger: which batches exist (each deletes a fixed sample set).

    ``dvc.yaml`` makes prepare, references and unlearn depend on this file rather than on the
    ledger, whose lifecycle progress (statuses, step times, evidence) changes on every run:
    a second ``dvc repro`` with no new request then re-runs nothing that defines data or models.
    """
    path = project.requests_dir / "deletions.json"
    document = {"version": 1, "batches": sorted(ledger.batches)}
    if not path.exists() or json.loads(path.read_text()) != document:
        write_json_atomic(path, document)


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
        # Batches that removed no training sample never make a model retire (no model saw them).
        ledger.batches[batch_id]["train_samples"] = len(ids)
    deleted = ledger.deleted_ids()
    store = SampleStore.materialize(project.store_dir, source, params.data.shard_size, deleted)
    # Models trained on data that is now deleted are never used again: reference models that
    # trained on a deleted sample are retired (tombstoned), and exact retrains of an older data
    # version are removed.
    retired = ReferenceBank(project.references_dir).retire_containing(deleted, batches=ledger.pending())
    for ref_id in retired:
        log.info("prepare: retired reference %s (trained on deleted samples)", ref_id)
    for batch_id in ledger.pending():
        ledger.batches[batch_id].setdefault("references_retired", []).extend(retired)
    live = retrained_path(project, store)
    for path in project.models_dir.glob("retrained-*.pt"):
        if path != live:
            path.unlink()
    if ledger.pending():
        _mark_step(ledger, ledger.pending(), "data_version")
        ledger.save()
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
    data_version = dvc_ops.data_version(project)
    if champion is None and not force:
        # A crash between registering the baseline and giving it the alias: reuse that version.
        for mv in tracking.all_versions(project, client):
            run = client.get_run(mv.run_id) if mv.run_id else None
            if (run is not None and run.data.tags.get("stage") == "train" and mv.tags.get("retired") != "true"
                    and run.data.tags.get("data_version") == data_version):
                tracking.move_champion(project, client, str(mv.version))
                return _write_state(project, "train", {"skipped": True, "recovered": True,
                                                       "version": str(mv.version)})
    device = _device(project)
    store = SampleStore(project.store_dir)
    ledger = Ledger(project.ledger_path)
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
        with progress.bar(recipe.epochs, "train baseline", unit="epoch") as bar:
            model = train_model(
                model, train_t.images, train_t.labels, recipe, device=device, seed=params.seed,
                on_epoch=progress.epoch_callback(bar, lambda epoch, m: mlflow.log_metrics(m, step=epoch)),
            )
        seconds = time.perf_counter() - started
        metrics = {"train_acc": accuracy(model, train_t.images, train_t.labels, device=device),
                   "test_acc": accuracy(model, test_t.images, test_t.labels, device=device),
                   "train_seconds": seconds}
        mlflow.log_metrics(metrics)
        version, model_id = tracking.log_model(
            project, model, _input_example(store), architecture=architecture,
            tags={"role": "baseline", "method": "train", "verdict": "baseline",
                  "parent_version": "", "data_version": data_version,
                  "data_version_before": "", "data_version_after": data_version,
                  "request_batches": "", "run_id": run.info.run_id,
                  # The store excludes every batch in the ledger, pending or not.
                  "covers_through": _newest_batch(ledger, list(ledger.batches)),
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
    tracking.log_dataset_input(dataset, context)  # retries the shared-server insert race


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


def _ladder_key(project: Project, parent_version: str, batches: list[str]) -> str:
    """Identity of one escalation: the champion it starts from, the batches, and the policy."""
    params = project.params
    ladder = params.unlearn.ladder
    return hashlib.sha256(json.dumps(
        [parent_version, sorted(batches), list(ladder), {m: params.method_kwargs(m) for m in ladder},
         params.seed, repr(params.verify), repr(params.gate)], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def _mark_step(ledger: Ledger, batch_ids: list[str], step: str, at: str | None = None) -> None:
    """Record when a batch reached a lifecycle step (the first time only): the deletion SLA."""
    for batch_id in batch_ids:
        steps = ledger.batches[batch_id].setdefault("steps", {})
        steps.setdefault(step, at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def begin_unlearning(project: Project) -> dict[str, Any]:
    """Start, or resume, the escalation for every pending batch.

    The state (``data/state/unlearn.json``) is keyed by the champion, the pending batches and
    the policy: a re-run after a crash keeps every attempt that already has a verdict, so no
    batch is unlearned twice and no duplicate model version is registered. Batches that name
    only test-split samples need no unlearning (no model saw them) and are completed here.

    Returns:
        The state: ``status`` (nothing_pending, data_only, unlearning or done), the attempts so
        far and ``next_method`` (None when the ladder is finished).
    """
    ledger = Ledger(project.ledger_path)
    client = tracking.setup(project)
    # A promotion interrupted by a crash is finished first: new batches must be unlearned from
    # the model that already forgot the earlier ones, never from its predecessor.
    _finish_promotions(project, client, ledger)
    pending = ledger.pending()
    if not pending:
        return _write_state(project, "unlearn", {"status": "nothing_pending", "next_method": None})
    champion = tracking.champion_version(project, client)
    if champion is None:
        raise PipelineError("no champion model in the registry; run the train stage first")
    forget = _load_forget(project, pending)
    data_version = dvc_ops.data_version(project)
    if len(forget) == 0:
        for batch_id in pending:
            ledger.set_status(batch_id, Ledger.COMPLETED, {"at": _now(), "outcome": "data_only",
                                                           "data_version": data_version})
        _mark_step(ledger, pending, "completed")
        ledger.save()
        audit.record(project, "batch.completed", batch_ids=pending, outcome="data_only",
                     data_version=data_version)
        return _write_state(project, "unlearn", {"status": "data_only", "batches": pending, "next_method": None})
    key = _ladder_key(project, str(champion.version), pending)
    try:
        previous = _read_state(project, "unlearn")
    except PipelineError:
        previous = {}
    if previous.get("key") == key:
        # Resume: keep attempts with a verdict; an attempt cut off before its verdict is redone.
        attempts = [a for a in previous.get("attempts", []) if a.get("verdict") in ("pass", "fail")]
    else:
        attempts = []
    state = {
        "status": "unlearning", "key": key, "parent_version": str(champion.version), "batches": pending,
        "data_version_before": champion.tags.get("data_version", ""), "data_version_after": data_version,
        "parent_covers_through": champion.tags.get("covers_through", ""),
        "n_forget": len(forget), "forget_classes": ledger.forget_classes(pending),
        "ladder": list(project.params.unlearn.ladder), "attempts": attempts,
    }
    return _write_state(project, "unlearn", _next_rung(state))


def _next_rung(state: dict[str, Any]) -> dict[str, Any]:
    """Set ``next_method``, ``chosen`` and the promoted attempt's ``run_id``/``method`` from the attempts."""
    attempts = state["attempts"]
    passed = [i for i, a in enumerate(attempts) if a.get("verdict") == "pass"]
    tried = len(attempts)
    state["chosen"] = passed[0] if passed else None
    finished = bool(passed) or tried >= len(state["ladder"])
    state["next_method"] = None if finished else state["ladder"][tried]
    state["status"] = "done" if finished else "unlearning"
    final = attempts[state["chosen"]] if passed else (attempts[-1] if attempts and finished else None)
    state["run_id"] = final["run_id"] if final else None
    state["method"] = final["method"] if final else None
    return state


def run_attempt(project: Project, method: str) -> dict[str, Any]:
    """One rung of the ladder: make the champion forget the pending batches with ``method``.

    The model is saved under ``data/models/`` and an MLflow run records method, parameters,
    counts and lineage (never sample ids: a digest of them). ``retrain`` reuses the exact
    retrain the gate compares against when it is cached.

    Args:
        project: The project.
        method: A registered method name (the state's ``next_method``).

    Returns:
        The updated state.
    """
    import mlflow
    from mlflow.entities import LoggedModelInput

    params = project.params
    state = _read_state(project, "unlearn")
    if state.get("status") != "unlearning" or state.get("next_method") != method:
        raise PipelineError(f"no escalation is waiting for {method!r} (state: {state.get('status')}, "
                            f"next: {state.get('next_method')}); run the unlearn stage")
    client = tracking.setup(project)
    store = SampleStore(project.store_dir)
    forget = _load_forget(project, state["batches"])
    device = _device(project)
    data = _unlearning_data(project, store, forget)
    champion = tracking.champion_version(project, client)
    original = tracking.load_model(project, client, state["parent_version"])
    kwargs = params.method_kwargs(method)
    number = len(state["attempts"]) + 1
    with mlflow.start_run(run_name=f"unlearn-{method}") as run:
        mlflow.log_params({"method": method, "seed": params.seed, "n_forget": len(forget),
                           "n_retain": len(data.retain), "parent_version": state["parent_version"],
                           "attempt": number, **{f"method_{k}": v for k, v in kwargs.items()}})
        mlflow.set_tags({
            "stage": "unlearn", "method": method, "attempt": str(number), "ladder": ",".join(state["ladder"]),
            "request_batches": _tag_list(state["batches"]),
            "forget_ids_digest": hash_ids(forget.ids.tolist(), load_or_create_salt(project.salt_path)),
            "data_version_before": state["data_version_before"], "data_version_after": state["data_version_after"],
            "git_commit": dvc_ops.git_commit(project),
        })
        _log_dataset(store, state["data_version_after"], "retain")
        if champion is not None and champion.tags.get("model_id"):
            mlflow.log_input(model=LoggedModelInput(model_id=champion.tags["model_id"]))
        started = time.perf_counter()
        if method == "retrain":
            model, _, _ = _retrained_model(project, store, data)
        else:
            model = run_method(method, original, data, device=device, seed=params.seed, kwargs=kwargs)
        seconds = time.perf_counter() - started
        mlflow.log_metric("unlearn_seconds", seconds)
    project.models_dir.mkdir(parents=True, exist_ok=True)
    candidate = project.models_dir / f"candidate-{number}-{method}.pt"
    tmp = candidate.with_name(f".{candidate.name}.tmp")
    torch.save(model.cpu().state_dict(), tmp)
    os.replace(tmp, candidate)
    state["attempts"].append({"method": method, "run_id": run.info.run_id, "candidate": candidate.name,
                              "unlearn_seconds": seconds, "verdict": None, "started_at": _now()})
    ledger = Ledger(project.ledger_path)
    _mark_step(ledger, state["batches"], "unlearned")
    ledger.save()
    log.info("unlearn: attempt %d, %s forgot %d samples in %.1fs", number, method, len(forget), seconds)
    return _write_state(project, "unlearn", state)


def run_unlearn(project: Project, *, attempt: Any = None, verify: Any = None) -> dict[str, Any]:
    """Run the escalation ladder: each method in turn until one's model passes verification.

    ``params.yaml: unlearn.method`` is tried first, then ``unlearn.escalation`` in order; every
    attempt is an MLflow run with its verdict. The Prefect flow passes its tasks as ``attempt``
    and ``verify`` so each rung is a task; ``dvc repro`` calls this with the plain functions.

    Args:
        project: The project.
        attempt: ``(project, method) -> state`` (default :func:`run_attempt`).
        verify: ``(project) -> report`` (default :func:`run_verify`).

    Returns:
        The final state: attempts with verdicts, the chosen attempt (or None if all failed).
    """
    attempt = attempt or run_attempt
    verify = verify or run_verify
    state = begin_unlearning(project)
    if not state.get("attempts"):
        _skipped_report(project, state["status"])  # dvc.yaml declares the report as an output
    # A bar only when there is something to run: the ladder's length bounds the attempts.
    total = len(state.get("ladder") or []) - len(state.get("attempts") or []) if state.get("next_method") else 0
    with progress.bar(total, "escalation", unit="attempt") if total > 0 else contextlib.nullcontext(
            progress.SILENT) as bar:
        while state.get("next_method"):
            bar.set_description(f"escalation: {state['next_method']}")
            attempt(project, state["next_method"])
            verify(project)
            state = _read_state(project, "unlearn")
            bar.update(1)
            done = (state.get("attempts") or [{}])[-1]
            bar.set_postfix({"last": f"{done.get('method')} {done.get('verdict')}"})
    return state


def _skipped_report(project: Project, reason: str) -> dict[str, Any]:
    report = {"status": "skipped", "reason": reason}
    write_json_atomic(project.reports_dir / "verification.json", report)
    write_json_atomic(project.reports_dir / "metrics.json", {"verified": 0})
    return report


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
    names = ", ".join(p.ref_id for p in plans) if len(plans) <= 2 else f"{len(plans)} models"
    with progress.bar(recipe.epochs * len(plans), f"references ({names})", unit="epoch") as bar:
        for plan, index in zip(plans, indices, strict=True):
            begun = time.perf_counter()
            model = train_model(seeded_model(factory, plan.seed), images[index], labels[index], recipe,
                                device=device, seed=plan.seed, on_epoch=progress.epoch_callback(bar))
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


def retrained_path(project: Project, store: SampleStore) -> Path:
    """Where the exact retrain for the live training set is cached (it may not exist yet)."""
    return project.models_dir / f"retrained-{_retrained_key(project, store.split_ids('train'))}.pt"


def _retrained_model(project: Project, store: SampleStore, data: UnlearningData) -> tuple[torch.nn.Module, float, bool]:
    """The exactly retrained model for the live training set (the gate's target): cached, or trained."""
    params = project.params
    path = retrained_path(project, store)
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


# --------------------------------------------------------------------------- evaluation (verify and sweeps)


def evaluation_sets(project: Project, store: SampleStore, forget: Arrays, forget_classes: list[int]) -> EvalSets:
    """The forget, retain and test sets every model is evaluated on.

    Args:
        project: The project.
        store: The live sample store (its train split is the retain set).
        forget: The forget samples (from the quarantine).
        forget_classes: Classes forgotten as a whole; the test set is then restricted to them.

    Returns:
        The sets, with their sample ids (the signal cache's keys).
    """
    test = store.load_split("test")
    if forget_classes:
        # Class-wise forgetting: compare the forget set with unseen samples of the same classes,
        # or the attack would learn "class", not "membership" (mia-and-peers.md section 2).
        test = Arrays(*(a[np.isin(test.labels, forget_classes)] for a in (test.ids, test.images, test.labels)))
    retain = store.load_split("train")
    return EvalSets(_tensors(forget), _tensors(retain), _tensors(test),
                    ids={"forget": forget.ids, "retain": retain.ids, "test": test.ids})


@dataclass(frozen=True)
class Baselines:
    """What every candidate is compared with: the original and retrained models, and the references.

    Attributes:
        proofs: Evidence of the ``original`` and ``retrain`` models.
        outcome: Their attack-suite results.
        references: Evidence of the reference models (empty when no attack needs them).
        reference_ids: Their ids, aligned with ``references``.
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    references: list[ModelEvidence]
    reference_ids: list[str]


@dataclass(frozen=True)
class Evaluation:
    """One candidate model's evaluation against the retrained model, and the gate's verdict.

    Attributes:
        proofs: Evidence per role (``original``, ``retrain``, ``unlearned``; no ``unlearned`` when
            the candidate diverged).
        outcome: Attack-suite results per role (a diverged candidate's metrics are all NaN).
        gate: The two-sided gate's checks.
        exact: The candidate is the exact retrain itself (the gate's own target: it passes).
        reference_ids: Reference models the attacks used.
        attack_seconds: Wall time of the evaluation.
    """

    proofs: dict[str, ModelEvidence]
    outcome: dict[str, SuiteResult]
    gate: GateResult
    exact: bool
    reference_ids: list[str]
    attack_seconds: float

    @property
    def results(self) -> dict[str, dict[str, float]]:
        """Metrics per role."""
        return {role: r.metrics for role, r in self.outcome.items()}

    @property
    def refused(self) -> dict[str, dict[str, str]]:
        """Refused metrics per role, with the reason."""
        return {role: r.refused for role, r in self.outcome.items()}

    @property
    def verdict(self) -> str:
        """"pass" or "fail"."""
        return "pass" if self.exact else self.gate.verdict

    @property
    def failures(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        return [] if self.exact else self.gate.failures()


def _evidence_fn(project: Project, sets: EvalSets, cache: SignalCache | None) -> Any:
    return functools.partial(model_evidence, sets=sets, device=_device(project),
                             augmentations=project.params.verify.augmentations, cache=cache)


def _suite_fn(params: Params) -> Any:
    verify = params.verify
    return functools.partial(attack_suite, attacks=verify.attacks, attack_options=verify.attack_options,
                             fprs=verify.fprs, min_negatives=verify.min_negatives,
                             bootstrap=verify.bootstrap, seed=params.seed)


def evaluate_baselines(project: Project, store: SampleStore, sets: EvalSets, *, original: torch.nn.Module,
                       retrained: torch.nn.Module) -> Baselines:
    """Evidence and attack results of the original and retrained models, and the reference models' evidence.

    Signals go through the project's signal cache (``data/signals/``), so a second call reads them.

    Args:
        project: The project.
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        original: The model the candidates unlearned from (the champion).
        retrained: The exact retrain without the forget samples (the gate's target).

    Returns:
        The baselines.

    Raises:
        PipelineError: If fewer usable reference models exist than ``verify.references.count``.
    """
    params = project.params
    device = _device(project)
    verify = params.verify
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir))
    suite = _suite_fn(params)
    refs, ref_ids = [], []
    if needs_references(params):
        bank = ReferenceBank(project.references_dir)
        usable = [r for r in bank.usable(recipe_key(project, store), sets.ids["retain"])
                  if r.pair < verify.references.count // 2]
        if len(usable) < verify.references.count:
            raise PipelineError(f"{len(usable)} usable reference models but verify.references.count is "
                                f"{verify.references.count}; run the references stage first")
        architecture = _architecture(project, store)
        for record in usable:
            model = build_model(params.model.name, architecture["in_channels"], architecture["num_classes"])
            model.load_state_dict(bank.load_state(record.ref_id))
            refs.append(evidence(model.to(device), with_retain=False))
            ref_ids.append(record.ref_id)
    proofs = {"original": evidence(original.to(device)), "retrain": evidence(retrained.to(device))}
    outcome = {role: suite(proofs[role], refs) for role in proofs}
    return Baselines(proofs, outcome, refs, ref_ids)


def evaluate_candidate(project: Project, store: SampleStore, sets: EvalSets, candidate: torch.nn.Module, *,
                       method: str, original: torch.nn.Module, retrained: torch.nn.Module,
                       baselines: Baselines | None = None, cache_candidate: bool = True) -> Evaluation:
    """Attack an unlearned model, the original and the retrained one, and apply the two-sided gate.

    The one evaluation behind the verify stage and method sweeps (:mod:`tasks.sweep`). Pure with
    respect to the pipeline: no MLflow, no state, ledger or audit writes; only the signal cache.

    Args:
        project: The project (``verify`` and ``gate`` come from its params).
        store: The live sample store.
        sets: From :func:`evaluation_sets`.
        candidate: The unlearned model.
        method: The method that produced it (``retrain`` is checked for being the exact retrain).
        original: The model it was unlearned from.
        retrained: The exact retrain (from :func:`_retrained_model`).
        baselines: Precomputed :func:`evaluate_baselines` (computed here when None).
        cache_candidate: Cache the candidate's signals too. Sweeps do not: their candidates are
            never verified again, and their cache files would only accumulate.

    Returns:
        The evaluation: metrics per role, refusals, gate checks, verdict.
    """
    started = time.perf_counter()
    exact = method == "retrain" and _same_weights(candidate, retrained)
    if baselines is None:  # computed here, so their time counts as this evaluation's
        baselines = evaluate_baselines(project, store, sets, original=original, retrained=retrained)
    proofs, outcome = dict(baselines.proofs), dict(baselines.outcome)
    evidence = _evidence_fn(project, sets, SignalCache(project.signals_dir) if cache_candidate else None)
    try:
        proofs["unlearned"] = evidence(candidate.to(_device(project)))
        outcome["unlearned"] = _suite_fn(project.params)(proofs["unlearned"], baselines.references)
    except DivergedModelError as exc:
        # A diverged model is a verdict, not a crash: every metric is NaN and the gate fails.
        log.warning("verify: %s", exc)
        outcome["unlearned"] = SuiteResult({k: float("nan") for k in outcome["retrain"].metrics}, {}, {})
    gate = apply_gate(outcome["unlearned"].metrics, outcome["retrain"].metrics, project.params.gate.tolerances,
                      refused={**outcome["retrain"].refused, **outcome["unlearned"].refused})
    return Evaluation(proofs, outcome, gate, exact, list(baselines.reference_ids), time.perf_counter() - started)


def run_verify(project: Project) -> dict[str, Any]:
    """Attack the original, the latest attempt's unlearned model and the retrained one; apply the gate.

    Metrics per model: accuracy on forget/retain/test and, for each configured attack, the
    forget-vs-test ROC-AUC, best balanced accuracy and TPR at low FPRs, each with a bootstrap
    interval (a TPR the test set is too small for is refused and listed). Reference attacks
    use the live reference models (see :mod:`unlearn.references`); signals are cached by
    sample id. The verdict, every number, the ROC and histogram plots are logged on the
    attempt's MLflow run and written under ``data/reports/`` (``attempts/<n>-<method>.json``
    per attempt, ``verification.json`` for the latest). An exact ``retrain`` attempt is the
    gate's own target: it passes by construction, with the evidence still computed.

    Returns:
        The report.
    """
    import mlflow

    params = project.params
    unlearn_state = _read_state(project, "unlearn")
    report_path = project.reports_dir / "verification.json"
    attempts = unlearn_state.get("attempts") or []
    if unlearn_state.get("status") not in ("unlearning", "done") or not attempts:
        return _skipped_report(project, unlearn_state.get("status"))
    attempt = attempts[-1]
    if attempt.get("verdict") is not None:  # verified already (a re-run after a crash)
        return json.loads((project.reports_dir / "attempts" / attempt["report"]).read_text())
    client = tracking.setup(project)
    _device(project)  # an unavailable device fails before any work
    store = SampleStore(project.store_dir)
    forget = _load_forget(project, unlearn_state["batches"])
    data = _unlearning_data(project, store, forget)
    forget_classes = unlearn_state.get("forget_classes") or []
    sets = evaluation_sets(project, store, forget, forget_classes)
    original = tracking.load_model(project, client, unlearn_state["parent_version"])
    candidate = data.model_factory()
    candidate.load_state_dict(_load_candidate_state(project, attempt))
    retrained, retrain_seconds, cached = _retrained_model(project, store, data)
    evaluation = evaluate_candidate(project, store, sets, candidate, method=attempt["method"], original=original,
                                    retrained=retrained)
    verify = params.verify
    proofs, outcome, gate, exact = evaluation.proofs, evaluation.outcome, evaluation.gate, evaluation.exact
    results, refused, ref_ids = evaluation.results, evaluation.refused, evaluation.reference_ids
    attack_seconds, verdict, failures = evaluation.attack_seconds, evaluation.verdict, evaluation.failures
    plots = reporting.verification_plots(project.plots_dir, {r: o.scores for r, o in outcome.items()}, proofs)
    # Each attempt keeps its own plots: certificates embed the evidence of the model they certify.
    attempt_plots = project.reports_dir / "attempts" / f"{attempt['run_id']}-plots"
    attempt_plots.mkdir(parents=True, exist_ok=True)
    for path in plots:
        shutil.copy2(path, attempt_plots / path.name)
    number = len(attempts)
    report = {
        "status": "verified", "verdict": verdict, "failures": failures, "exact_retrain": exact,
        "method": attempt["method"], "attempt": number,
        "checks": [{"metric": c.metric, "unlearned": c.candidate, "retrain": c.reference,
                    "gap": c.gap, "gap_ci": _gap_interval(c.metric, outcome, params), "tolerance": c.tolerance,
                    "passed": c.passed or exact, "note": "exact retrain: the gate's own target" if exact else c.note}
                   for c in gate.checks],
        "models": results, "refused": refused, "reference_cached": cached, "retrain_seconds": retrain_seconds,
        "attack_seconds": attack_seconds, "run_id": attempt["run_id"],
        "forget_classes": forget_classes, "reference_models": ref_ids, "augmentations": verify.augmentations,
        "n_forget": len(sets.forget), "n_retain": len(sets.retain), "n_test": len(sets.test),
    }
    attempt_report = project.reports_dir / "attempts" / f"{attempt['run_id']}.json"  # unique across escalations
    write_json_atomic(attempt_report, report)
    write_json_atomic(report_path, report)
    # The compact numbers `dvc metrics show/diff` compare across runs: gate metrics and attack AUCs.
    shown = [m for m in results["retrain"] if m in params.gate.tolerances or m.endswith(".auc")]
    write_json_atomic(project.reports_dir / "metrics.json", {
        "verified": 1, "verdict_pass": int(verdict == "pass"), "attempts": number,
        **{role: {m: results[role].get(m) for m in shown} for role in ("original", "unlearned", "retrain")}})
    with mlflow.start_run(run_id=attempt["run_id"]):
        mlflow.log_metrics(_finite(results["unlearned"]))
        for role in ("original", "retrain"):
            mlflow.log_metrics({f"{role}.{k}": v for k, v in _finite(results[role]).items()})
        mlflow.log_metrics(_finite({f"gap.{c.metric}": c.gap for c in gate.checks}))
        mlflow.log_metrics({"retrain_seconds": retrain_seconds, "attack_seconds": attack_seconds})
        mlflow.set_tags({"verdict": verdict, "gate_failures": "; ".join(failures),
                         "exact_retrain": str(exact).lower(), "reference_models": ",".join(ref_ids)})
        mlflow.log_artifact(str(attempt_report), artifact_path="verification")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="verification/plots")
    attempt.update({"verdict": verdict, "failures": failures, "report": attempt_report.name,
                    "verified_at": _now(), "attack_seconds": attack_seconds})
    state = _write_state(project, "unlearn", _next_rung(unlearn_state))
    ledger = Ledger(project.ledger_path)
    if verdict == "pass":
        _mark_step(ledger, state["batches"], "verified")
        ledger.save()
    audit.record(project, "attempt.verified", method=attempt["method"], attempt=number, verdict=verdict,
                 run_id=attempt["run_id"], batch_ids=state["batches"], failures=len(failures))
    log.info("verify: attempt %d (%s) verdict %s", number, attempt["method"], verdict)
    return report


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when two models hold bit-identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


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
    """Register the escalation's model with its lineage; move ``champion`` only if it passed.

    Crash-safe and idempotent: the version is found again by its run id instead of being
    registered twice; the batches are marked ``promoting`` (with the version) before the alias
    moves and ``completed`` after, so a re-run finishes an interrupted promotion. When every
    rung failed, the last attempt is registered with its verdict and no alias; the champion
    does not move and the batches stay pending.

    Returns:
        Version, verdict, aliases.
    """
    client = tracking.setup(project)
    ledger = Ledger(project.ledger_path)
    finished = _finish_promotions(project, client, ledger)
    state = _read_state(project, "unlearn")
    if state.get("status") != "done" or not state.get("run_id"):
        if finished:
            return _write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return _write_state(project, "promote", {"status": "nothing_to_promote"})
    if any(ledger.batches.get(b, {}).get("status") != Ledger.PENDING for b in state["batches"]):
        # Already promoted (this run's batches are completed) or superseded: nothing to do.
        if finished:
            return _write_state(project, "promote", {"status": "promoted", "version": finished[-1],
                                                     "recovered": True, **_aliases(project, client)})
        return _write_state(project, "promote", {"status": "nothing_to_promote", "reason": "batches not pending"})
    champion = tracking.champion_version(project, client)
    if champion is None or str(champion.version) != state["parent_version"]:
        # The escalation started from another champion: its model never forgot what the current
        # champion forgot. Never promote it; the next run starts a fresh escalation.
        raise PipelineError(f"the escalation started from version {state['parent_version']} but the champion is "
                            f"{None if champion is None else champion.version}; re-run the pipeline")
    chosen = state["attempts"][state["chosen"]] if state["chosen"] is not None else state["attempts"][-1]
    report = json.loads((project.reports_dir / "attempts" / chosen["report"]).read_text())
    if report["run_id"] != chosen["run_id"]:
        raise PipelineError("verification report belongs to another unlearning run; re-run unlearn")
    passed = report["verdict"] == "pass"
    existing = tracking.find_version_by_run(project, client, chosen["run_id"])
    if existing is not None:
        version = str(existing.version)
    else:
        version = _register_candidate(project, state, chosen, report, passed)
    previous = None
    last_notes = [ledger.batches[b]["history"][-1] if ledger.batches[b]["history"] else {} for b in state["batches"]]
    if not passed and all(n.get("outcome") == "verification_failed" and str(n.get("model_version")) == version
                          for n in last_notes):
        return _write_state(project, "promote", {"status": "rejected", "version": version, "verdict": "fail",
                                                 "method": chosen["method"], "unchanged": True,
                                                 **_aliases(project, client)})
    if passed:
        for batch_id in state["batches"]:
            ledger.set_status(batch_id, Ledger.PROMOTING, {"at": _now(), "outcome": "promoting",
                                                           "model_version": version})
        ledger.save()
        audit.record(project, "model.verified", model_version=version, method=chosen["method"],
                     batch_ids=state["batches"], attempts=len(state["attempts"]))
        finished = _finish_promotions(project, client, ledger)
        previous = state["parent_version"]
    else:
        for batch_id in state["batches"]:
            ledger.set_status(batch_id, Ledger.PENDING, {"at": _now(), "outcome": "verification_failed",
                                                         "model_version": version})
        ledger.save()
        audit.record(project, "model.rejected", model_version=version, batch_ids=state["batches"],
                     attempts=len(state["attempts"]), failures=len(report["failures"]))
    result = {"status": "promoted" if passed else "rejected", "version": version, "verdict": report["verdict"],
              "method": chosen["method"], "attempts": [[a["method"], a["verdict"]] for a in state["attempts"]],
              "previous_champion": previous, **_aliases(project, client)}
    log.info("promote: version %s %s", version, result["status"])
    return _write_state(project, "promote", result)


def _aliases(project: Project, client: Any) -> dict[str, Any]:
    aliases = client.get_registered_model(tracking.model_name(project)).aliases
    return {"aliases": {k: str(v) for k, v in aliases.items()}}


def _register_candidate(project: Project, state: dict[str, Any], chosen: dict[str, Any],
                        report: dict[str, Any], passed: bool) -> str:
    """Log the chosen attempt's model in its run and register it, with lineage tags."""
    import mlflow

    store = SampleStore(project.store_dir)
    architecture = _architecture(project, store)
    model = build_model(architecture["model"], architecture["in_channels"], architecture["num_classes"])
    model.load_state_dict(_load_candidate_state(project, chosen))
    ledger = Ledger(project.ledger_path)
    covers = _newest_batch(ledger, state["batches"] + [state.get("parent_covers_through") or ""]) if passed \
        else state.get("parent_covers_through", "")
    metrics = report["models"]["unlearned"]
    with mlflow.start_run(run_id=chosen["run_id"]):
        version, _ = tracking.log_model(project, model, _input_example(store), architecture=architecture, tags={
            "role": "unlearned", "method": chosen["method"], "verdict": report["verdict"],
            "gate_failures": "; ".join(report["failures"]), "parent_version": state["parent_version"],
            "data_version": state["data_version_after"], "data_version_before": state["data_version_before"],
            "data_version_after": state["data_version_after"], "request_batches": _tag_list(state["batches"]),
            "covers_through": covers, "ladder": ",".join(f"{a['method']}:{a['verdict']}" for a in state["attempts"]),
            "run_id": chosen["run_id"], "git_commit": dvc_ops.git_commit(project),
            **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()},
        })
    return version


def _finish_promotions(project: Project, client: Any, ledger: Ledger) -> list[str]:
    """Complete batches left ``promoting``: move the alias (if not yet) and mark them completed."""
    done = []
    for batch_id in ledger.batches_with_status(Ledger.PROMOTING):
        version = str(ledger.batches[batch_id]["history"][-1]["model_version"])
        champion = tracking.champion_version(project, client)
        moved = champion is None or str(champion.version) != version
        if moved:
            tracking.move_champion(project, client, version)
        # Recorded per batch, also when a re-run finds the alias already moved (crash in between).
        audit.record(project, "model.promoted", model_version=version, batch_id=batch_id,
                     previous_version=None if champion is None or not moved else str(champion.version),
                     recovered=not moved)
        ledger.set_status(batch_id, Ledger.COMPLETED, {"at": _now(), "outcome": "promoted", "model_version": version})
        _mark_step(ledger, [batch_id], "promoted")
        ledger.save()
        done.append(version)
    return done


def _newest_batch(ledger: Ledger, batch_ids: list[str]) -> str:
    """The most recent of ``batch_ids`` in ledger order (creation time), "" if none."""
    known = [b for b in batch_ids if b in ledger.batches]
    return max(known, key=lambda b: (ledger.batches[b]["created_at"], b)) if known else ""


def _input_example(store: SampleStore) -> torch.Tensor:
    """A synthetic model input (zeros): a real sample would put personal data into the registry."""
    return torch.zeros(1, *store.image_shape)


def _load_candidate_state(project: Project, attempt: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = project.models_dir / attempt["candidate"]
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise PipelineError(f"candidate model {path.name} is missing or corrupt: {exc}; re-run unlearn") from None


def run_purge(project: Project) -> dict[str, Any]:
    """Retire contaminated models, redact data versions, scan for the bytes (see :mod:`tasks.lifecycle`)."""
    from tasks.lifecycle import run_purge as purge

    return purge(project)


def run_certify(project: Project) -> dict[str, Any]:
    """Write deletion certificates for closed batches (see :mod:`tasks.lifecycle`)."""
    from tasks.lifecycle import run_certify as certify

    return certify(project)


STAGE_FUNCTIONS = {
    "ingest": run_ingest, "prepare": run_prepare, "train": run_train, "references": run_references,
    "unlearn": run_unlearn, "verify": run_verify, "promote": run_promote, "purge": run_purge,
    "certify": run_certify,
}


def _tag_list(items: list[str], limit: int = 4000) -> str:
    """Comma-joined for an MLflow tag, truncated to fit (the ledger keeps the full list)."""
    joined = ",".join(items)
    return joined if len(joined) <= limit else f"{joined[:limit - 40].rsplit(',', 1)[0]},... ({len(items)} in all)"
