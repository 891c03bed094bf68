"""Benchmark: strength and cost of every membership-inference attack, and reference-model throughput.

Protocol (issue "Membership-inference verification"; mia-and-peers.md sections 2-7):
- Data: the embedded default (params.yaml's source, digits), its train/test split. D_F is a
  seeded random 10% of the training split, D_R the rest, D_T the test split.
- Models: the original (trained on D_R + D_F), the exact retrain (D_R only) and AMUN's
  unlearned model (from the original, params.yaml's AMUN settings). All use params.yaml's recipe.
- Promotion-time attacks (the verify stage's kinds): loss threshold, loss LR with CV, SVC
  confidence; offline LiRA (per-example variance, and the global-variance variant, which
  verify.attacks may list but the shipped list does not) and offline RMIA on 4 reference models
  trained on random halves of D_R (pairs), i.e. OUT of every forget and test sample. The pipeline
  trains its references on halves of a held-out pool (verify.references.pool_fraction, 20%), so
  they see about a fifth of the data these do: these attacks are at least as strong as its.
- Audit attacks: online LiRA (both variances) on 16 "audit" reference models trained on random
  halves of the training and test splits together (D_F and D_T samples are IN for about half of
  them, which a real deletion forbids); U-LiRA with those 16 models as shadow originals, each unlearned by AMUN
  from the forget samples it trained on; the NeurIPS 2023 epsilon score with N models per side.
- Metrics: forget-vs-test AUC, TPR at 1% / 0.1% FPR (refused when the test split is too small)
  and at the lowest FPR it supports (10 negatives), each with a 95% bootstrap interval; the
  paired bootstrap interval of AUC(original) - AUC(retrained).
- Cost: reference-model trainings per attack, wall time of a verification with cached
  reference models against one retraining, and reference training throughput for 8 models:
  sequential, batched (torch.func/vmap), and through Prefect's thread and Dask task runners.

Writes benchmarks/results/verification.{json,md} and verification_roc.png.

Usage:
    python benchmarks/verification.py            # full run, CPU (about 6 minutes on 2 cores)
    python benchmarks/verification.py --quick    # smaller counts, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unlearn.attacks import AttackInput, ShadowSignals, run_attack
from unlearn.attacks.signals import logit_scaled_confidence, view_logits
from unlearn.config import load_params
from unlearn.data import load_source
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.metrics import attack_metrics, paired_bootstrap_difference
from unlearn.models import build_model
from unlearn.references import ReferenceBank
from unlearn.training import SGDRecipe, seed_everything, to_float, train_model
from unlearn.verification import EvalSets, attack_suite, model_evidence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
POPULATION = ("loss_threshold", "loss_lr", "svc_confidence")
OFFLINE = ("lira_offline", "lira_offline_global", "rmia_offline")
ONLINE = ("lira_online", "lira_online_global", "lira_offline")
ROLES = ("original", "retrain", "amun", "retrain_seed1")  # retrain_seed1: an exact retrain, another seed
EPSILON_ROLES = ("original", "retrain", "amun")


class Setup:
    """Data, recipe and model factory shared by every step."""

    def __init__(self, seed: int, device: str) -> None:
        self.params = load_params(REPO / "params.yaml")
        self.device, self.seed = device, seed
        source = load_source(self.params.data)
        train, test = source.splits == "train", source.splits == "test"
        self.train_ids, self.test_ids = source.ids[train], source.ids[test]
        self.x_train, self.y_train = to_float(source.images[train]), torch.as_tensor(source.labels[train])
        self.x_test, self.y_test = to_float(source.images[test]), torch.as_tensor(source.labels[test])
        rng = np.random.default_rng(seed)
        n = len(self.y_train)
        self.forget_mask = np.zeros(n, dtype=bool)
        self.forget_mask[rng.choice(n, size=n // 10, replace=False)] = True
        self.recipe = SGDRecipe.from_config(self.params.train)
        # Audit references train on halves of train + test, so every audited sample (forget or
        # test) is IN for about half of them, as online LiRA needs.
        self.pool_ids = np.concatenate([self.train_ids, self.test_ids])
        self.x_pool, self.y_pool = torch.cat([self.x_train, self.x_test]), torch.cat([self.y_train, self.y_test])
        self.in_channels, self.num_classes = source.images.shape[1], len(source.classes)

    def factory(self) -> torch.nn.Module:
        return build_model(self.params.model.name, self.in_channels, self.num_classes)

    def train(self, index: np.ndarray, seed: int, *, pool: bool = False) -> torch.nn.Module:
        """Train on ``index`` into the training split (or into train + test when ``pool``)."""
        seed_everything(seed)
        model = self.factory()
        idx = torch.as_tensor(index)
        x, y = (self.x_pool, self.y_pool) if pool else (self.x_train, self.y_train)
        return train_model(model, x[idx], y[idx], self.recipe, device=self.device, seed=seed)

    def subset(self, mask: np.ndarray) -> TensorSet:
        idx = torch.as_tensor(np.flatnonzero(mask))
        return TensorSet(self.x_train[idx], self.y_train[idx])

    def unlearning_data(self, forget_mask: np.ndarray, retain_mask: np.ndarray) -> UnlearningData:
        return UnlearningData(forget=self.subset(forget_mask), retain=self.subset(retain_mask),
                              num_classes=self.num_classes, train_recipe=self.recipe, model_factory=self.factory)

    def amun(self, original: torch.nn.Module, forget_mask: np.ndarray, retain_mask: np.ndarray,
             seed: int) -> torch.nn.Module:
        return run_method("amun", original, self.unlearning_data(forget_mask, retain_mask), device=self.device,
                          seed=seed, kwargs=self.params.method_kwargs("amun"),
                          recalibrate_bn=self.params.unlearn.recalibrate_bn)  # the pipeline's candidate


def _pairs(pool_ids: np.ndarray, count: int, seed: int, tmp: Path) -> list[np.ndarray]:
    """Member ids of ``count`` references in complementary pairs, drawn as the bank draws them."""
    return [p.members for p in ReferenceBank(tmp).plan(pool_ids, count=count, recipe_key="bench", seed=seed)]


def _phi(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str) -> np.ndarray:
    return logit_scaled_confidence(view_logits(model, images, "none", device=device), labels)[:, 0]  # (N,)


def _summarise(metrics: dict[str, float], attack: str) -> dict[str, float | None]:
    keys = ("auc", "auc.ci_low", "auc.ci_high", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "tpr_at_lowest_fpr",
            "tpr_at_lowest_fpr.ci_low", "tpr_at_lowest_fpr.ci_high", "lowest_fpr")
    return {k: metrics.get(f"mia.{attack}.{k}") for k in keys}


def throughput(setup: Setup, count: int, members: list[np.ndarray]) -> dict[str, float]:
    """Wall time of training ``count`` reference models four ways."""
    from prefect import flow, task, unmapped
    from prefect.task_runners import ThreadPoolTaskRunner

    from unlearn.batched import train_models_batched

    position = {s: i for i, s in enumerate(setup.train_ids.tolist())}
    indices = [np.array([position[s] for s in m.tolist()]) for m in members[:count]]
    seeds = list(range(100, 100 + count))
    out = {}
    started = time.perf_counter()
    for index, seed in zip(indices, seeds, strict=True):
        setup.train(index, seed)
    out["sequential_s"] = time.perf_counter() - started
    started = time.perf_counter()
    train_models_batched(setup.factory, setup.x_train, setup.y_train, indices, setup.recipe, seeds=seeds,
                         device=setup.device)
    out["batched_s"] = time.perf_counter() - started

    @task(name="bench-train-reference")
    def train_one(shared: dict, index: np.ndarray, seed: int) -> int:
        torch.set_num_threads(1)  # one core per worker: the runner supplies the parallelism
        seed_everything(seed)
        model = build_model(shared["model"], shared["in_channels"], shared["num_classes"])
        idx = torch.as_tensor(index)
        train_model(model, shared["x"][idx], shared["y"][idx], shared["recipe"], device="cpu", seed=seed)
        return seed

    @flow(name="bench-references")
    def fan_out(shared: dict) -> list[int]:
        return [f.result() for f in train_one.map(unmapped(shared), indices, seeds)]

    shared = {"model": setup.params.model.name, "in_channels": setup.in_channels,
              "num_classes": setup.num_classes, "x": setup.x_train, "y": setup.y_train, "recipe": setup.recipe}
    fan_out.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(shared)  # start the API server
    started = time.perf_counter()
    fan_out.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(shared)
    out["prefect_threads_2_s"] = time.perf_counter() - started
    try:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                                "dashboard_address": None})
        started = time.perf_counter()
        fan_out.with_options(task_runner=runner)(shared)
        out["prefect_dask_2_workers_s"] = time.perf_counter() - started  # includes the cluster's start
    except Exception as exc:  # noqa: BLE001 - report, do not hide, a Dask failure
        out["prefect_dask_error"] = repr(exc)[:300]
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return out


def main() -> None:  # noqa: PLR0915 - a linear protocol reads best as one function
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    promo_count, audit_count, eps_models, tput_count = (2, 4, 3, 2) if args.quick else (4, 16, 8, 8)
    setup = Setup(args.seed, args.device)
    forget, retain = setup.forget_mask, ~setup.forget_mask
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        started = time.perf_counter()
        value = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return value

    all_index = np.arange(len(setup.y_train))
    original = timed("train_original", lambda: setup.train(all_index, args.seed))
    retrained = timed("retrain", lambda: setup.train(np.flatnonzero(retain), args.seed))
    retrained_b = setup.train(np.flatnonzero(retain), args.seed + 1)  # a second exact retrain (U-LiRA pairs)
    amun = timed("amun", lambda: setup.amun(original, forget, retain, args.seed))
    targets = {"original": original, "retrain": retrained, "amun": amun, "retrain_seed1": retrained_b}

    tmp = RESULTS / ".bench-bank"
    position = {s: i for i, s in enumerate(setup.train_ids.tolist())}
    promo_members = _pairs(setup.train_ids[retain], promo_count, args.seed, tmp / "promo")
    audit_members = _pairs(setup.pool_ids, audit_count, args.seed + 7, tmp / "audit")
    pool_position = {s: i for i, s in enumerate(setup.pool_ids.tolist())}
    promo_refs, audit_refs = [], []
    for k, members in enumerate(promo_members):
        promo_refs.append(timed("promotion_references", lambda m=members, k=k: setup.train(
            np.array([position[s] for s in m.tolist()]), 1000 + k)))
    for k, members in enumerate(audit_members):
        audit_refs.append(timed("audit_references", lambda m=members, k=k: setup.train(
            np.array([pool_position[s] for s in m.tolist()]), 2000 + k, pool=True)))

    sets = EvalSets(setup.subset(forget), setup.subset(retain), TensorSet(setup.x_test, setup.y_test))
    cfg = setup.params.verify
    suite_kwargs = {"fprs": cfg.fprs, "min_negatives": cfg.min_negatives, "bootstrap": cfg.bootstrap,
                    "seed": args.seed}

    # A verification with cached reference models: evidence of 4 targets + K references, the suite.
    started = time.perf_counter()
    evidence = {role: model_evidence(m, sets, device=args.device) for role, m in targets.items()}
    promo_evidence = [model_evidence(m, sets, device=args.device, with_retain=False) for m in promo_refs]
    results: dict[str, dict[str, dict]] = {role: {} for role in ROLES}
    scores: dict[str, dict[str, dict]] = {role: {} for role in ROLES}
    for role in ROLES:
        suite = attack_suite(evidence[role], promo_evidence, attacks=POPULATION + OFFLINE,
                             attack_options=cfg.attack_options, **suite_kwargs)
        for attack in POPULATION + OFFLINE:
            results[role][attack] = _summarise(suite.metrics, attack)
            scores[role][attack] = suite.scores[attack]
    timings["verification_with_cached_references"] = time.perf_counter() - started

    # Audit attacks: online LiRA on references that trained on about half of D_F.
    forget_ids = set(setup.train_ids[forget].tolist())
    forget_in = np.array([[s in set(m.tolist()) for s in setup.train_ids[forget]] for m in audit_members])
    test_in = np.array([[s in set(m.tolist()) for s in setup.test_ids] for m in audit_members])
    started = time.perf_counter()
    audit_evidence = [model_evidence(m, sets, device=args.device, with_retain=False) for m in audit_refs]
    for role in ROLES:
        suite = attack_suite(evidence[role], audit_evidence, attacks=ONLINE, reference_in=(forget_in, test_in),
                             **suite_kwargs)
        for attack in ONLINE:
            name = "lira_offline_audit_refs" if attack == "lira_offline" else attack
            results[role][name] = _summarise(suite.metrics, attack)
            scores[role][name] = suite.scores[attack]
    timings["online_attacks"] = time.perf_counter() - started

    # U-LiRA: each audit reference is a shadow original; AMUN unlearns the forget samples it trained on.
    x_f, y_f = sets.forget.images, sets.forget.labels
    unlearned_rows, never_rows = [], []
    for k, (model, members) in enumerate(zip(audit_refs, audit_members, strict=True)):
        member_set = set(members.tolist())
        shadow_forget = np.array([s in member_set and s in forget_ids for s in setup.train_ids.tolist()])
        shadow_retain = np.array([s in member_set and s not in forget_ids for s in setup.train_ids.tolist()])
        shadow = timed("ulira_shadow_unlearning", lambda m=model, f=shadow_forget, r=shadow_retain, k=k:
                       setup.amun(m, f, r, 3000 + k))
        unlearned_rows.append(_phi(shadow, x_f, y_f, args.device))
        never_rows.append(_phi(model, x_f, y_f, args.device))
    unlearned_obs, never_obs = np.stack(unlearned_rows), np.stack(never_rows)  # (M, N_F)
    matched = _phi(retrained_b, x_f, y_f, args.device)  # "never seen" side of each matched pair
    for role in ROLES:
        pair = _phi(retrained, x_f, y_f, args.device) if role == "retrain_seed1" else matched
        shadows = ShadowSignals(unlearned_obs, forget_in, never_obs, ~forget_in,
                                target_unlearned=_phi(targets[role], x_f, y_f, args.device), target_retrained=pair)
        result = run_attack("ulira", AttackInput(evidence[role].forget, evidence[role].retain, evidence[role].test,
                                                 seed=args.seed, shadows=shadows))
        report = attack_metrics(result.member_scores, result.nonmember_scores, fprs=cfg.fprs,
                                min_negatives=cfg.min_negatives, resamples=cfg.bootstrap, seed=args.seed)
        results[role]["ulira"] = {**_summarise(report.flat("mia.ulira"), "ulira"), **result.extra}

    # NeurIPS 2023 epsilon score: N models per side on D_F.
    eps_retrained = [retrained] + [timed("epsilon_retrains", lambda s=s: setup.train(np.flatnonzero(retain), s))
                                   for s in range(args.seed + 10, args.seed + 10 + 2 * eps_models - 1)]
    groups = {
        "original": [original] + [timed("epsilon_originals", lambda s=s: setup.train(all_index, s))
                                  for s in range(args.seed + 50, args.seed + 50 + eps_models - 1)],
        "amun": [timed("epsilon_unlearning", lambda s=s: setup.amun(original, forget, retain, s))
                 for s in range(args.seed, args.seed + eps_models)],
        "retrain": eps_retrained[eps_models:],
    }
    reference_phi = np.stack([_phi(m, x_f, y_f, args.device) for m in eps_retrained[:eps_models]])
    for role in EPSILON_ROLES:
        candidate_phi = np.stack([_phi(m, x_f, y_f, args.device) for m in groups[role]])
        shadows = ShadowSignals(candidate_phi, np.ones_like(candidate_phi, dtype=bool), reference_phi,
                                np.ones_like(reference_phi, dtype=bool), candidate_phi[0], reference_phi[0])
        result = run_attack("epsilon_score", AttackInput(evidence[role].forget, evidence[role].retain,
                                                         evidence[role].test, seed=args.seed, shadows=shadows))
        results[role]["epsilon_score"] = dict(result.extra)

    # Strength targets on the original model vs the retrain.
    comparable = [a for a in results["original"] if results["original"][a].get("auc") is not None]
    comparable = [a for a in comparable if all(results[r][a].get("auc") is not None for r in ROLES)]
    strongest = max(comparable, key=lambda a: results["original"][a]["auc"] - results["retrain"][a]["auc"])
    diff = paired_bootstrap_difference(
        scores["original"][strongest]["member"], scores["original"][strongest]["nonmember"],
        scores["retrain"][strongest]["member"], scores["retrain"][strongest]["nonmember"],
        metric="auc", resamples=1000, seed=args.seed) if strongest in scores["original"] else (None, None, None)
    per_attack = {}
    for attack in comparable:
        if attack not in scores["original"]:
            continue
        d = paired_bootstrap_difference(
            scores["original"][attack]["member"], scores["original"][attack]["nonmember"],
            scores["retrain"][attack]["member"], scores["retrain"][attack]["nonmember"],
            metric="auc", resamples=1000, seed=args.seed)
        t_o, t_r = results["original"][attack]["tpr_at_lowest_fpr"], results["retrain"][attack]["tpr_at_lowest_fpr"]
        per_attack[attack] = {"auc_diff": d[0], "ci_low": d[1], "ci_high": d[2],
                              "tpr_ratio": (t_o / t_r) if t_r else float("inf")}
    tpr_o = results["original"][strongest]["tpr_at_lowest_fpr"]
    tpr_r = results["retrain"][strongest]["tpr_at_lowest_fpr"]
    tput = throughput(setup, tput_count, _pairs(setup.train_ids, tput_count, args.seed + 11, tmp / "tput"))
    reference_cost = {
        "loss_threshold": 0, "loss_lr": 0, "svc_confidence": 0, "lira_offline": promo_count,
        "lira_offline_global": promo_count, "rmia_offline": promo_count,
        "lira_online": audit_count, "lira_online_global": audit_count, "lira_offline_audit_refs": audit_count,
        "ulira": f"{audit_count} shadow originals + {audit_count} unlearning runs",
        "epsilon_score": f"{2 * eps_models - 1} retrains + {eps_models} unlearning runs (+{eps_models - 1} originals)",
    }
    summary = {
        "strongest_attack": strongest,
        "auc_original_minus_retrain": {"diff": diff[0], "ci_low": diff[1], "ci_high": diff[2]},
        "auc_ci_excludes_zero": diff[1] is not None and diff[1] > 0,
        "tpr_at_lowest_fpr": {"original": tpr_o, "retrain": tpr_r, "lowest_fpr":
                              results["original"][strongest]["lowest_fpr"]},
        "tpr_ratio": (tpr_o / tpr_r) if tpr_r else float("inf"),
        "per_attack_original_vs_retrain": per_attack,
        "verify_cost_in_retrains": timings["verification_with_cached_references"] / timings["retrain"],
        "reference_topup_cost_in_retrains": timings["promotion_references"] / timings["retrain"],
        "batched_speedup_cpu": tput["sequential_s"] / tput["batched_s"],
        # Seed-to-seed noise of each metric for an exact retrain: a gate tolerance below it rejects
        # a perfect unlearning method by chance.
        "retrain_seed_noise_auc": {a: abs(results["retrain_seed1"][a]["auc"] - results["retrain"][a]["auc"])
                                   for a in comparable},
        "amun_gap_auc": {a: results["amun"][a]["auc"] - results["retrain"][a]["auc"] for a in comparable},
    }
    payload = {
        "protocol": __doc__, "seed": args.seed,
        "command": " ".join(["python benchmarks/verification.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": args.device},
        "sizes": {"train": int(len(setup.y_train)), "forget": int(forget.sum()), "test": int(len(setup.y_test)),
                  "promotion_references": promo_count, "audit_references": audit_count,
                  "epsilon_models_per_side": eps_models},
        "results": results, "reference_trainings": reference_cost, "timings_s": timings,
        "throughput": tput, "summary": summary, "quick": args.quick,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"verification{suffix}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (RESULTS / f"verification{suffix}.md").write_text(render(payload))
    plot(scores, RESULTS / f"verification{suffix}_roc.png")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(render(payload))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "refused"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(payload: dict) -> str:
    """The markdown report."""
    res, s, t = payload["results"], payload["summary"], payload["timings_s"]
    lines = ["# Membership-inference verification benchmark", "",
             *([f"Command: `{payload['command']}` (seed {payload['seed']}).", ""] if "command" in payload else []),
             f"Machine: {payload['machine']}. Sizes: {payload['sizes']}.", "",
             "## Attack strength: forget vs test (AUC [95% CI]; TPR at the lowest FPR the test split supports)", "",
             "| attack | reference trainings | original AUC | retrain AUC | AMUN AUC | retrain (seed 1) AUC "
             "| original TPR | retrain TPR | AMUN TPR | retrain (seed 1) TPR | TPR@1% / 0.1% |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for attack in res["original"]:
        if attack == "epsilon_score":
            continue
        cells = []
        for role in ROLES:
            r = res[role][attack]
            cells.append(f"{_fmt(r['auc'])} [{_fmt(r['auc.ci_low'], 2)}, {_fmt(r['auc.ci_high'], 2)}]")
        tprs = [_fmt(res[role][attack]["tpr_at_lowest_fpr"]) for role in ROLES]
        low = res["original"][attack]
        lines.append(f"| {attack} | {payload['reference_trainings'].get(attack)} | {' | '.join(cells)} | "
                     f"{' | '.join(tprs)} | {_fmt(low['tpr_at_fpr_0.01'])} / {_fmt(low['tpr_at_fpr_0.001'])} |")
    lines += ["", f"Lowest supported FPR: {_fmt(res['original']['loss_threshold']['lowest_fpr'], 4)} "
              "(10 false positives among the test split); TPR at 1% and 0.1% FPR are refused below that.", "",
              "U-LiRA pair accuracy (0.5 = indistinguishable from a retrain): " + ", ".join(
                  f"{role} {_fmt(res[role]['ulira'].get('pair_accuracy'))}" for role in ROLES), "",
              "## NeurIPS 2023 epsilon score (forgetting quality F, 1 = indistinguishable from retraining)", "",
              "| model | F | mean epsilon | max epsilon | models per side |", "|---|---|---|---|---|"]
    for role in EPSILON_ROLES:
        e = res[role]["epsilon_score"]
        lines.append(f"| {role} | {_fmt(e.get('forgetting_quality'))} | {_fmt(e.get('epsilon_mean'))} | "
                     f"{_fmt(e.get('epsilon_max'))} | {_fmt(e.get('n_models'))} |")
    d = s["auc_original_minus_retrain"]
    lines += ["", "## Targets", "",
              f"- Strongest attack on the original model: **{s['strongest_attack']}**. AUC(original) - AUC(retrain) "
              f"= {_fmt(d['diff'])}, paired 95% CI [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]: "
              f"{'excludes' if s['auc_ci_excludes_zero'] else 'does NOT exclude'} zero.",
              f"- TPR at FPR {_fmt(s['tpr_at_lowest_fpr']['lowest_fpr'], 4)}: original "
              f"{_fmt(s['tpr_at_lowest_fpr']['original'])} vs retrain {_fmt(s['tpr_at_lowest_fpr']['retrain'])} "
              f"= {_fmt(s['tpr_ratio'], 2)}x (target >= 3x).",
              "- Every attack, original vs retrain (paired AUC difference [95% CI]; TPR ratio at the lowest FPR): "
              + "; ".join(f"{a} {_fmt(v['auc_diff'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}], "
                          f"{_fmt(v['tpr_ratio'], 2)}x" for a, v in s["per_attack_original_vs_retrain"].items()) + ".",
              f"- A verification with cached reference models (signals of {len(payload['results'])} models + "
              f"{payload['sizes']['promotion_references']} references, 6 attacks, bootstrap CIs) took "
              f"{_fmt(t['verification_with_cached_references'], 2)} s = {_fmt(s['verify_cost_in_retrains'], 2)} "
              f"retrainings ({_fmt(t['retrain'], 2)} s each; target <= 1).",
              f"- Training the {payload['sizes']['promotion_references']} promotion reference models (each on half of "
              f"D_R) costs {_fmt(t['promotion_references'], 2)} s = "
              f"{_fmt(s['reference_topup_cost_in_retrains'], 2)} retrainings. (The pipeline trains its references "
              "once, on the held-out pool: a deletion from the training split retires none of them.)",
              "", "## Gate calibration: |AUC gap| of an exact retrain with another seed (noise) and of AMUN", "",
              "| attack | retrain seed noise | AMUN - retrain |", "|---|---|---|"]
    lines += [f"| {a} | {_fmt(s['retrain_seed_noise_auc'][a])} | {_fmt(s['amun_gap_auc'][a], 3)} |"
              for a in s["retrain_seed_noise_auc"]]
    lines += [
              "", "## Reference-model training throughput", "",
              "| how | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, 2) if isinstance(v, float) else v} |" for k, v in payload["throughput"].items()]
    lines += ["", f"Batched vs sequential on this CPU: {_fmt(s['batched_speedup_cpu'], 2)}x. The >= 4x target is "
              "for a GPU; no GPU was lent to this task, so it is unmeasured.", "",
              "## Wall times (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in t.items()]
    return "\n".join(lines) + "\n"


def plot(scores: dict, path: Path) -> None:
    """Log-log ROC curves (forget vs test) of every attack for the three models."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import roc_curve

    attacks = list(scores["original"])
    cols = 3
    rows = (len(attacks) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    colours = {"original": "tab:red", "retrain": "tab:green", "amun": "tab:blue", "retrain_seed1": "tab:olive"}
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for role in ROLES:
            member, nonmember = scores[role][attack]["member"], scores[role][attack]["nonmember"]
            labels = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
            fpr, tpr, _ = roc_curve(labels, np.concatenate([member, nonmember]))
            floor = 0.5 / len(nonmember)
            ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colours[role], label=role)
        ax.plot([1e-3, 1], [1e-3, 1], color="grey", linestyle=":")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), title=attack, xlabel="FPR", ylabel="TPR")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
