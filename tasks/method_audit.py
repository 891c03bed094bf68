"""Scheduled exact-retrain audits of the unlearning methods (issue #12, item 4).

Why: the per-batch gate is retrain-free, so it compares a candidate with "never trained" through
attacks; only an exact retrain shows a method's *true* gap. Retraining for every request would cost
several retrains per deletion, so the exact retrain moves here, off the request path: an audit picks
a past completed promotion, rebuilds its situation, runs the same method again and retrains exactly
without the batch, then scores both with the gate core in STRICT mode (targets = the exact
retrains; the parent is the positive control). The audited gap per metric (estimate, interval,
margin, verdict) goes to MLflow and the audit log; a method whose audited gap is beyond the margin
(:func:`unlearn.gate_policy.audit_demotes`) leaves the escalation ladder (:mod:`tasks.ladder`).

Rebuilding a past batch:

* **Parent data**: the training split as it was before the batch, i.e. the live training set plus
  every training sample deleted by the audited batches or later ones, taken from the upstream
  source in source order (the order the store had, so an exact retrain of the baseline reproduces
  it bit for bit on CPU). The DVC version ``data_version_before`` is usually redacted by purge; it
  is recorded by name only. The deleted samples are read from the upstream source exactly as
  purge's byte scan does (:func:`tasks.lifecycle.deleted_arrays`); a deployment whose upstream
  source honours deletions too cannot audit a purged batch (the audit then refuses, naming why).
* **Parent model**: the registered parent version when its artifacts still exist; otherwise (purge
  retires every version that saw a deleted sample) it is retrained exactly from the parent data,
  and the record says ``parent_source: retrained``. A parent that was itself an approximate model
  is then replaced by its exact equivalent: the audit measures the method's gap from an exact
  parent, which is what the ladder needs to know.
* **Evidence**: the forget samples as positives, the live test split as negatives (restricted to
  the forgotten classes for class-wise requests), reference models OUT of every scored sample
  (live bank references if enough exist, else references trained for this audit on halves of the
  retain set, never registered).

No personal data leaves this module: records carry batch ids, counts, versions and numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks import audit, dvc_ops, tracking
from tasks.ladder import EXACT, append_history, demote, demoted, history, recover_demotions
from tasks.project import PipelineError, Project
from tasks.stage.context import check_architecture, model_architecture, resolve_device, tensors
from tasks.stage.evaluation import forgotten_classes, gate_decision_for, label_matched
from tasks.stage.references import recipe_key
from unlearn.data import SampleStore
from unlearn.data.sources import load_source
from unlearn.data.store import Arrays
from unlearn.files import utc_now
from unlearn.gate import GateDecision
from unlearn.gate_policy import audit_demotes, audit_due
from unlearn.methods import UnlearningData, run_method
from unlearn.models import build_model
from unlearn.references import ReferenceBank, derive_seed, members_digest, out_references
from unlearn.requests import Ledger
from unlearn.training import SGDRecipe, seeded_model, train_model
from unlearn.verification import EvalSets, gate_scores, model_evidence

log = logging.getLogger("unlearn.pipeline")

EXACT_METHODS = (EXACT, "train", "consolidate")  # exact models: nothing to audit


# --------------------------------------------------------------------------- history and choice


def promotions(ledger: Ledger) -> list[dict[str, Any]]:
    """Completed promotions, oldest first: ``{"model_version", "run_id", "batches"}`` (batches unlearned together).

    Told apart by the promoted attempt's run as well as the version number: a project moved to another registry
    numbers its versions from 1 again, and its old version 2 is not its new version 2 (``run_id`` is None for
    batches promoted before notes carried it)."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for batch_id in ledger.batches_with_status(Ledger.COMPLETED):
        note = ledger.last_note(batch_id)
        if note.get("outcome") == "promoted" and note.get("model_version") is not None:
            run_id = next((n.get("run_id") for n in reversed(ledger.batch(batch_id).get("history", []))
                           if n.get("outcome") == "promoting"), None)
            groups.setdefault((str(note["model_version"]), run_id), []).append(batch_id)
    rank = ledger.rank()
    ordered = sorted(groups.items(), key=lambda kv: max(rank[b] for b in kv[1]))
    return [{"model_version": v, "run_id": r, "batches": ledger.oldest_first(b)} for (v, r), b in ordered]


def batches_since_audit(project: Project, ledger: Ledger) -> int:
    """Promoted batches newer than the newest batch any audit looked at (every one when none did)."""
    rank = ledger.rank()
    seen = [rank[b] for r in history(project) for b in r.get("batch_ids", []) if b in rank]
    newest = max(seen, default=-1)
    return sum(1 for p in promotions(ledger) for b in p["batches"] if rank[b] > newest)


def due(project: Project) -> bool:
    """Whether the count rule (``gate.audit.every_batches``) calls for an audit now."""
    every = project.params.gate.audit.every_batches
    return audit_due(batches_since_audit(project, Ledger(project.ledger_path)), every)


def pick(project: Project, client: Any, ledger: Ledger, batch: str | None = None,
         method: str | None = None) -> dict[str, Any] | None:
    """The promotion to audit: the one holding ``batch``, or the most recent approximate one not yet audited.

    Args:
        project: The project.
        client: An MLflow client.
        ledger: The deletion ledger.
        batch: Audit the promotion that completed this batch.
        method: Audit this method instead of the one the batch used (a rung of the ladder that
            rarely runs, e.g. an escalation step behind a primary method that usually passes, is
            otherwise never audited); any promotion qualifies then, exact ones included.

    Returns:
        ``{"model_version", "batches", "method", "parent_version"}``, or None when nothing is left to audit.

    Raises:
        PipelineError: If ``batch`` is unknown, not completed by a promotion, or was unlearned exactly
            (and no ``method`` was named), or ``method`` is exact.
    """
    if method is not None:
        from unlearn.methods import METHODS
        from unlearn.registry import UnknownNameError

        if method in EXACT_METHODS:
            raise PipelineError(f"{method!r} is exact: there is no gap to audit")
        try:
            METHODS.get(method)
        except UnknownNameError as exc:
            raise PipelineError(str(exc).strip('"')) from None
    # An audit names the promoted attempt's run; one from before it did (or of a promotion whose note named none) is
    # matched by the version number and the batches together: numbers start from 1 again in another registry.
    audited = {(r["audited_run_id"], r.get("method")) if r.get("audited_run_id") else
               (r.get("model_version"), frozenset(r.get("batch_ids") or []), r.get("method")) for r in history(project)}
    found = promotions(ledger)
    if batch is not None:
        if batch not in ledger.batches:
            raise PipelineError(f"batch {batch[:80]!r} is not in the ledger")
        found = [p for p in found if batch in p["batches"]]
        if not found:
            raise PipelineError(f"batch {batch} was not completed by a promotion (status "
                                f"{ledger.batch(batch)['status']}); only promoted batches can be audited")
    for candidate in reversed(found):
        mv = tracking.registered_promotion(project, client, candidate["model_version"], candidate["run_id"],
                                           candidate["batches"][0])
        if mv is None:  # promoted in a registry the project no longer uses: its method and parent are not here
            if batch is not None:
                raise PipelineError(f"batch {batch} was promoted to version {candidate['model_version']} of a "
                                    "registry this project no longer uses (the current registry does not hold it): "
                                    "it cannot be audited here")
            log.info("audit: version %s of an earlier registry skipped (not in the current one)",
                     candidate["model_version"])
            continue
        used = mv.tags.get("method", "")
        audited_method = method or used
        if batch is None and ((candidate["run_id"], audited_method) in audited or (
                candidate["model_version"], frozenset(candidate["batches"]), audited_method) in audited):
            continue
        if audited_method in EXACT_METHODS:
            if batch is not None:
                raise PipelineError(f"batch {batch} was unlearned by the exact {used!r}: there is no gap to audit "
                                    "(name a method to audit on it)")
            continue
        return {**candidate, "method": audited_method, "method_used": used,
                "parent_version": mv.tags.get("parent_version", "")}
    return None


# --------------------------------------------------------------------------- rebuilding the batch's situation


@dataclass(frozen=True)
class Situation:
    """A past batch rebuilt: the parent's training data, the forget set, the negatives.

    Attributes:
        parent_train: The training split before the batch, in source order.
        forget: The batch's training samples (what the method had to forget).
        retain: ``parent_train`` without them (what the exact retrain trains on).
        test: The negatives (live test split; the forgotten classes only for class-wise batches).
        classes: The classes forgotten as a whole (empty for sample-wise batches).
        others: Class-wise batches: the test split's samples of the other classes (the gate's utility set).
    """

    parent_train: Arrays
    forget: Arrays
    retain: Arrays
    test: Arrays
    classes: tuple[int, ...] = ()
    others: Arrays | None = None


def _subset(arrays: Arrays, mask: np.ndarray) -> Arrays:
    return Arrays(arrays.ids[mask], arrays.images[mask], arrays.labels[mask])


def rebuild(project: Project, ledger: Ledger, batch_ids: list[str]) -> Situation:
    """The training data before ``batch_ids`` were deleted, their forget set and the negatives.

    Raises:
        PipelineError: If a deleted sample is no longer in the upstream source.
    """
    params = project.params
    store = SampleStore(project.store_dir)
    source = load_source(params.data)
    rank = ledger.rank()
    first = min(rank[b] for b in batch_ids)
    readd = {s for b in ledger.batches if rank[b] >= first for s in ledger.batch(b)["sample_ids"]}
    forget_ids = {s for b in batch_ids for s in ledger.batch(b)["sample_ids"]}
    live_train = set(store.split_ids("train").tolist())
    train_mask = source.splits == "train"
    if "pool_fraction" in store.meta:  # pool samples never train production models (unlearn.references)
        from unlearn.references import reference_pool_mask

        train_idx = np.flatnonzero(train_mask)
        pool = reference_pool_mask(source.ids[train_idx], store.meta["pool_fraction"], store.meta["pool_seed"])
        train_mask = train_mask.copy()
        train_mask[train_idx[pool]] = False
    ids = source.ids
    readd_mask = np.isin(ids, np.array(sorted(readd), dtype=str)) & train_mask
    missing = len(forget_ids - set(ids.tolist()))
    if missing:
        raise PipelineError(f"{missing} sample(s) of the audited batches are gone from the upstream source: "
                            "the batch's situation cannot be rebuilt (audit before the source deletes them)")
    parent_mask = np.isin(ids, np.array(sorted(live_train), dtype=str)) | readd_mask
    source_arrays = Arrays(ids, source.images, source.labels)
    parent = _subset(source_arrays, parent_mask)
    in_forget = np.isin(parent.ids, np.array(sorted(forget_ids), dtype=str))
    forget, retain = _subset(parent, in_forget), _subset(parent, ~in_forget)
    test = store.load_split("test")
    # as the verification did: classes left with no training sample are forgotten as a whole
    # (a class too rare in the test split to measure is audited sample-wise: the audit compares with exact retrains)
    classes, _ = forgotten_classes(ledger.forget_classes(batch_ids) or [], forget.labels, retain.labels, test.labels,
                                   params.gate.min_samples)
    others = None
    if classes:
        others = _subset(test, ~np.isin(test.labels, classes))
        test = _subset(test, np.isin(test.labels, classes)) if np.isin(forget.labels, classes).all() \
            else label_matched(test, forget.labels)
    return Situation(parent, forget, retain, test, tuple(classes), others)


# --------------------------------------------------------------------------- models


def _factory(project: Project, store: SampleStore) -> Any:
    shape = model_architecture(project, store)
    return lambda: build_model(project.params.model.name, shape["in_channels"], shape["num_classes"])


def _exact(project: Project, factory: Any, arrays: Arrays, seed: int, device: str) -> torch.nn.Module:
    """An exact training run on ``arrays`` with the production recipe (what the train stage does)."""
    data = tensors(arrays)
    model = seeded_model(factory, seed)
    return train_model(model, data.images, data.labels, SGDRecipe.from_config(project.params.train),
                       device=device, seed=seed).eval()


def _references(project: Project, store: SampleStore, situation: Situation, factory: Any,
                device: str) -> tuple[list[torch.nn.Module], list[str], bool]:
    """Reference models OUT of every scored sample: live bank ones, or trained here on halves of the retain set.

    Returns:
        (models, ids, trained_here).
    """
    count = max(2, project.params.verify.references.count)
    bank = ReferenceBank(project.references_dir)
    scored = np.concatenate([situation.forget.ids, situation.test.ids])
    live = [r.ref_id for r in bank.records.values()
            if r.status == "live" and r.recipe_key == recipe_key(project, store)]
    usable = out_references(bank, sorted(live), scored)[:count]
    if len(usable) >= count:
        models = []
        for ref_id in usable:
            model = factory()
            model.load_state_dict(bank.load_state(ref_id))
            models.append(model.eval())
        return models, usable, False
    # Complementary halves of the retain set: OUT for every forget and test sample by construction.
    models, ids = [], []
    for pair in range((count + 1) // 2):
        rng = np.random.default_rng(derive_seed("audit-reference", project.params.seed, pair))
        order = rng.permutation(len(situation.retain))
        for side, half in enumerate((order[: len(order) // 2], order[len(order) // 2:])):
            seed = derive_seed("audit-reference", project.params.seed, pair, side)
            models.append(_exact(project, factory, _subset(situation.retain, np.isin(
                np.arange(len(situation.retain)), half)), seed, device))
            ids.append(f"audit-p{pair}s{side}")
    return models[:count], ids[:count], True


# --------------------------------------------------------------------------- the audit


def audit_method(project: Project, *, batch: str | None = None, method: str | None = None) -> dict[str, Any]:
    """Audit one past promotion: the method's true gap against exact retrains, and the demotion if beyond the margin.

    Args:
        project: The project.
        batch: Audit the promotion holding this batch (default: the most recent approximate one not yet audited).
        method: Audit this method on that batch instead of the one the batch used (see :func:`pick`).

    Returns:
        The audit record (also in ``data/state/audits.json``, MLflow and the audit log), or
        ``{"status": "nothing_to_audit"}``.
    """
    import mlflow

    params = project.params
    gate = params.gate
    client = tracking.setup(project)
    ledger = Ledger(project.ledger_path)
    recover_demotions(project)  # a demotion an earlier audit recorded but a crash cut off
    chosen = pick(project, client, ledger, batch, method)
    if chosen is None:
        return {"status": "nothing_to_audit"}
    started = time.perf_counter()
    device = resolve_device(project)
    store = SampleStore(project.store_dir)
    factory = _factory(project, store)
    situation = rebuild(project, ledger, chosen["batches"])
    if len(situation.forget) == 0:
        raise PipelineError(f"the audited batches {chosen['batches']} removed no training sample")
    parent_version = chosen["parent_version"]
    parent_source = "retrained"
    check_architecture(project, tracking.champion_version(project, client))  # every model here is model.name
    if parent_version:
        mv = client.get_model_version(tracking.model_name(project), parent_version)
        if mv.tags.get("retired") != "true":
            try:
                parent = tracking.load_model(project, client, parent_version).eval()
                parent_source = "registry"
            except PipelineError as exc:
                log.info("audit: parent version %s not loadable (%s); retraining it exactly", parent_version, exc)
    if parent_source == "retrained":
        parent = _exact(project, factory, situation.parent_train, params.seed, device)
    method = chosen["method"]
    kwargs = params.method_kwargs(method)
    data = UnlearningData(forget=tensors(situation.forget), retain=tensors(situation.retain),
                          num_classes=len(store.classes), train_recipe=SGDRecipe.from_config(params.train),
                          model_factory=factory)
    method_started = time.perf_counter()
    candidate = run_method(method, copy.deepcopy(parent), data, device=device, seed=params.seed, kwargs=kwargs,
                           recalibrate_bn=params.unlearn.recalibrate_bn)  # as the pipeline's attempt ran
    method_seconds = time.perf_counter() - method_started
    retrain_started = time.perf_counter()
    seeds = [params.seed + i for i in range(gate.audit.retrains)]
    retrains = [_exact(project, factory, situation.retain, s, device) for s in seeds]
    retrain_seconds = time.perf_counter() - retrain_started
    refs, ref_ids, refs_trained = _references(project, store, situation, factory, device)
    sets = EvalSets(tensors(situation.forget), tensors(situation.retain), tensors(situation.test),
                    forgotten_classes=situation.classes,
                    others=None if situation.others is None else tensors(situation.others))
    ref_evidence = [model_evidence(r.to(device), sets, device=device, with_retain=False, with_others=False)
                    for r in refs]

    def scored(model: torch.nn.Module) -> Any:
        evidence = model_evidence(model.to(device), sets, device=device, with_retain=False)
        return gate_scores(evidence, ref_evidence, attacks=gate.attacks,
                           attack_options=params.verify.attack_options, seed=params.seed)

    decision = gate_decision_for(gate, scored(candidate), scored(parent), [scored(r) for r in retrains], sets)
    offending = audit_demotes(decision)
    record = _record(project, chosen, decision, offending, parent_source=parent_source, ref_ids=ref_ids,
                     refs_trained=refs_trained, seeds=seeds, situation=situation,
                     seconds={"method": method_seconds, "retrains": retrain_seconds,
                              "total": time.perf_counter() - started})
    with mlflow.start_run(run_name=f"audit-{method}") as run:
        mlflow.set_tags({"stage": "audit", "method": method, "audited_version": chosen["model_version"],
                         "parent_version": parent_version, "parent_source": parent_source,
                         "request_batches": ",".join(chosen["batches"]), "verdict": decision.verdict,
                         "offending": ",".join(offending), "gate_mode": "strict",
                         "data_version_before": record["data_version_before"],
                         "git_commit": dvc_ops.git_commit(project)})
        mlflow.log_params({"method": method, "retrains": len(seeds), "references": len(ref_ids),
                           "n_forget": len(situation.forget), "n_negative": len(situation.test),
                           # the method as configured now (kwargs and this), not necessarily as the attempt ran
                           "recalibrate_bn": params.unlearn.recalibrate_bn,
                           **{f"method_{k}": v for k, v in kwargs.items()}})
        mlflow.log_metrics(_metrics(decision, record["seconds"]))
        mlflow.log_dict(record, "audit/audit.json")
    record["run_id"] = run.info.run_id
    # The audit's own records first (the audit log's, then the history), the demotion after, the run's `demoted`
    # tag last: the demotion was written first, so a crash left the method skipped for good with no audit on
    # record, and the tag claimed a demotion before there was one (review of 2026-12-07). A crash after the
    # records is finished by recover_demotions; one between the two records leaves the audit due again.
    audit.record(project, "method.audited", method=method, audit_id=record["audit_id"],
                 model_version=chosen["model_version"], batch_ids=chosen["batches"], verdict=decision.verdict,
                 demoted=bool(offending), offending=offending, parent_source=parent_source, run_id=run.info.run_id,
                 gaps={c["metric"]: c["estimate"] for c in record["checks"]})
    append_history(project, record)  # after the record: a demotion is applied from the history only with it
    if offending:
        demote(project, method, {"audit_id": record["audit_id"], "metrics": offending,
                                 "audited_version": chosen["model_version"], "run_id": run.info.run_id,
                                 "demoted_at": record["at"]})
        log.warning("audit: %s demoted: audited gap beyond the margin on %s", method, ", ".join(offending))
    client.set_tag(run.info.run_id, "demoted", str(bool(offending)).lower())
    log.info("audit: %s on %s: %s", method, ",".join(chosen["batches"]), decision.summary())
    return record


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _record(project: Project, chosen: dict[str, Any], decision: GateDecision, offending: list[str], *,
            parent_source: str, ref_ids: list[str], refs_trained: bool, seeds: list[int], situation: Situation,
            seconds: dict[str, float]) -> dict[str, Any]:
    """The audit's JSON record: numbers, counts and versions, never a sample id."""
    at = utc_now()
    ledger = Ledger(project.ledger_path)
    first = ledger.oldest_first(chosen["batches"])[0]
    return {
        "status": "audited", "audit_id": f"audit-{at}-{chosen['model_version']}", "at": at,
        "method": chosen["method"], "method_used": chosen["method_used"], "model_version": chosen["model_version"],
        "audited_run_id": chosen.get("run_id"),
        "batch_ids": chosen["batches"],
        "parent_version": chosen["parent_version"], "parent_source": parent_source,
        "data_version_before": ledger.data_version_before(first) or "",
        "parent_train_digest": members_digest(situation.parent_train.ids),
        "n_forget": len(situation.forget), "n_negative": len(situation.test),
        "n_parent_train": len(situation.parent_train),
        "retrain_seeds": seeds, "references": ref_ids, "references_trained_for_audit": refs_trained,
        "verdict": decision.verdict, "reason": decision.reason, "parent_detected": decision.parent_detected,
        "demoted": bool(offending), "offending": offending, "already_demoted": chosen["method"] in demoted(project),
        "checks": [{"metric": c.metric, "estimate": _finite(c.estimate), "ci": [_finite(c.ci_low), _finite(c.ci_high)],
                    "margin": _finite(c.margin), "verdict": c.verdict, "parent_excess": _finite(c.parent_excess),
                    "parent_detected": c.parent_detected} for c in decision.checks],
        "alpha": decision.alpha, "margin_fraction": decision.margin_fraction, "resamples": decision.resamples,
        # attack -> the references the intervals left out one at a time (unlearn.gate_bootstrap.auc_draws)
        "reference_jackknife": dict(decision.reference_jackknife),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def _metrics(decision: GateDecision, seconds: dict[str, float]) -> dict[str, float]:
    out = {f"{k}_seconds": v for k, v in seconds.items()}
    for c in decision.checks:
        for name, value in (("estimate", c.estimate), ("ci_low", c.ci_low), ("ci_high", c.ci_high),
                            ("margin", c.margin), ("parent_excess", c.parent_excess)):
            if np.isfinite(value):
                out[f"audit.{c.metric}.{name}"] = float(value)
    return out
