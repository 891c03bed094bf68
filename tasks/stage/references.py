"""The references stage: make sure enough usable reference models exist (plan, train, register)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from tasks import dvc_ops, progress
from tasks.project import Project
from tasks.stage.checks import needs_references
from tasks.stage.context import load_forget, model_architecture, quarantine_path, resolve_device
from tasks.stage.state import write_state
from unlearn.attacks.signals import SignalCache
from unlearn.data import SampleStore
from unlearn.models import build_model
from unlearn.references import ReferenceBank, ReferencePlan, plan_pool_references
from unlearn.requests import Ledger
from unlearn.training import TRAINER_VERSION, SGDRecipe, seeded_model, to_float, train_model

log = logging.getLogger("unlearn.pipeline")


def recipe_key(project: Project, store: SampleStore) -> str:
    """Identity of the training recipe: reference models must share the deployed model's."""
    params = project.params
    return hashlib.sha256(json.dumps(
        [vars(params.train), model_architecture(project, store), "reference-v1", TRAINER_VERSION],
        sort_keys=True).encode()
    ).hexdigest()[:16]


def pool_in_use(project: Project, store: SampleStore) -> bool:
    """Whether reference models train on the reference pool (else on halves of the training split).

    The pool is used while every reference it has, or would train next, holds at least
    ``gate.min_samples`` samples, the gate's own floor for a set it tests: the pool's halves must
    be that large, and so must the members the bank would draw now (a side retired by deletions is
    redrawn from the complement of its surviving partner, which deletions concentrated on one side
    can leave nearly empty). Deletions of pool samples shrink it; a pool of one sample made every
    reference's training set empty, so the references stage failed for that batch and every later
    one (a wedge). A depleted pool (or none, fraction 0) falls back to halves of the live training
    split, which every deletion retires as before.
    """
    pool = store.split_ids("pool")
    floor = max(1, project.params.gate.min_samples)
    if len(pool) // 2 < floor:
        return False
    plans = plan_pool_references(ReferenceBank(project.references_dir), pool,
                                 count=project.params.verify.references.count,
                                 recipe_key=recipe_key(project, store), seed=project.params.seed)
    return all(len(plan.members) >= floor for plan in plans)


def reference_pool_ids(project: Project, store: SampleStore) -> np.ndarray:
    """The samples reference models train on: the reference pool, or (no usable pool) the training split.

    With a pool (``verify.references.pool_fraction`` > 0) production training never sees these
    samples, so forget samples and test negatives are OUT for every reference and deleting a
    training sample retires none; a deletion naming a pool sample retires exactly the
    references that trained on it (prepare). Without a pool (fraction 0), or once deletions have
    left it too small (:func:`pool_in_use`), references train on halves of the live training
    split, and every deletion retires the ones that saw it.
    """
    return _reference_training_ids(store, pool_in_use(project, store))


def _reference_training_ids(store: SampleStore, in_use: bool) -> np.ndarray:
    return store.split_ids("pool") if in_use else store.split_ids("train")


def use_batched(project: Project) -> bool:
    """Whether reference models are trained as one batched (vmapped) model."""
    mode = project.params.verify.references.batched
    return mode == "always" or (mode == "auto" and project.params.device.startswith("cuda"))


def plan_references(project: Project) -> list[ReferencePlan]:
    """Reference models to train so that ``verify.references.count`` usable ones exist.

    They train on the reference pool (:func:`reference_pool_ids`), once: later batches reuse them
    until a deletion names a pool sample. With a pool they are trained with the baseline, before any
    request: deleting a production sample retires none of them, so the first deletion's path needs
    only forward passes, like every later one (otherwise it paid the training of every reference).
    Without a pool (``pool_fraction`` 0, or a pool depleted by deletions: :func:`pool_in_use`)
    they train on halves of the training split and the next deletion would retire most of them,
    so they are planned only when a batch is pending. Nothing is planned unless a configured attack
    needs references. Live references trained with another recipe are retired first (they could
    never be used).
    """
    params = project.params
    if not needs_references(params):
        return []
    store = SampleStore(project.store_dir)
    in_use = pool_in_use(project, store)
    if not in_use and not Ledger(project.ledger_path).pending():
        return []  # no usable pool: trained when a request needs them (see above)
    if len(store.split_ids("train")) < params.train.min_samples:
        return []  # nothing to verify against: the model is withdrawn, not unlearned (see escalation)
    bank = ReferenceBank(project.references_dir)
    key = recipe_key(project, store)
    for ref_id in bank.retire_stale(key):
        log.info("references: retired %s (recipe changed)", ref_id)
    return plan_pool_references(bank, _reference_training_ids(store, in_use), count=params.verify.references.count,
                                recipe_key=key, seed=params.seed)


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
    device = resolve_device(project)
    architecture = model_architecture(project, store)
    train = store.load(np.sort(np.unique(np.concatenate([p.members for p in plans]))))
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
    in_use = pool_in_use(project, store)
    usable = [r for r in bank.usable(key, _reference_training_ids(store, in_use))
              if r.pair < project.params.verify.references.count // 2]
    warmed = warm_reference_signals(project, store, [r["state"] for r in trained])
    depleted = bool(len(store.split_ids("pool"))) and not in_use
    if depleted:
        log.warning("references: the reference pool (%d samples) cannot give every reference gate.min_samples "
                    "members; references train on halves of the training split (as with pool_fraction 0)",
                    len(store.split_ids("pool")))
    state = {"trained": [p.ref_id for p in plans], "usable": [r.ref_id for r in usable],
             "pool_depleted": depleted,
             "signals_warmed": warmed,
             "retired_total": sum(r.status != "live" for r in bank.records.values()),
             "train_seconds": round(sum(float(r["seconds"]) for r in trained), 3), "recipe_key": key}
    log.info("references: trained %d, usable %d", len(plans), len(usable))
    return write_state(project, "references", state)


def reference_model(project: Project, store: SampleStore, state: dict[str, Any]) -> torch.nn.Module:
    """A reference model rebuilt from its state dict, on the project's device."""
    architecture = model_architecture(project, store)
    model = build_model(project.params.model.name, architecture["in_channels"], architecture["num_classes"])
    model.load_state_dict(state)
    return model.to(resolve_device(project))


def warm_reference_signals(project: Project, store: SampleStore, states: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute new reference models' logits on every sample a batch can score, once, into the signal cache.

    Why: pool references never change while they live, so their logits on the training split,
    the test split and the pending forget samples are the same for every later batch. Computing
    them here, once per reference (like its training), leaves a batch's verification with the
    parent's and the candidate's forward passes only (issue #12: per-batch verification compute).
    Purge drops a deleted sample's rows from the cache, as before.

    Args:
        project: The project.
        store: The live sample store.
        states: State dicts of the newly trained references.

    Returns:
        ``{"models": n, "samples": n, "seconds": s}`` (zeros when nothing was trained).
    """
    if not states:
        return {"models": 0, "samples": 0, "seconds": 0.0}
    started = time.perf_counter()
    params = project.params
    parts = [store.load_split("train"), store.load_split("test")]
    quarantined = [b for b in Ledger(project.ledger_path).pending() if quarantine_path(project, b).exists()]
    if quarantined:
        parts.append(load_forget(project, quarantined))
    ids = np.concatenate([p.ids for p in parts])
    images = to_float(np.concatenate([p.images for p in parts]))
    cache = SignalCache(project.signals_dir)
    for state in states:
        cache.logits(reference_model(project, store, state), ids, images, augmentations=params.verify.augmentations,
                     device=resolve_device(project))
    seconds = round(time.perf_counter() - started, 3)
    log.info("references: cached %d models' logits on %d samples (%.2f s)", len(states), len(ids), seconds)
    return {"models": len(states), "samples": int(len(ids)), "seconds": seconds}


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

