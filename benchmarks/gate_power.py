"""Benchmark: power and error rates of the equivalence gate (issue #12), on CPU (digits by default).

Protocol (fixed before running; nothing here is tuned on the results):
- Data: params.yaml's source (digits) and train/test split. The reference pool is the per-id
  hashed ``verify.references.pool_fraction`` share of the training split
  (unlearn.references.reference_pool_mask); production models never train on it.
- Per seed (``--seeds``, default 5): the parent trains on the production training samples with
  params.yaml's recipe; 4 references (2 complementary pairs) train on halves of the pool, so
  every forget sample and every negative is OUT for every reference. For each forget-set size
  n, D_F is a seeded random n-subset of the production training samples; the exact retrain
  trains on the rest with another seed; AMUN unlearns D_F from the parent with params.yaml's
  settings. Negatives: the whole test split.
- Gate: params.yaml's ``gate`` section exactly (mode, gated attacks, accuracy checks, alpha,
  margin fraction, resamples, min_samples). The attacks are fixed in advance by that section.
  Each of parent (as candidate: must never pass), exact retrain (a false fail is an error) and
  AMUN is gated against the parent as the positive control.
- Sizes below ``gate.min_samples`` are inconclusive by rule: no model is trained for them.
- Compute: CPU seconds (process time, robust to other load on the shared machine) of one
  per-batch verification -- forward passes of the candidate on D_F and D_T and of the parent
  (positive control) on D_F, the parent's D_T signals and the references' read from a signal
  cache, the attacks and the bootstrap gate -- against the CPU seconds of one retrain of the
  production model with params.yaml's recipe. The references' logits on every production and
  test sample are computed once per reference set (the pipeline's references stage warms its
  SignalCache the same way) and reported apart: they are a cost of the reference models, not of
  a batch. The parent is the champion, verified as the previous batch's candidate, and the
  pipeline caches every candidate's logits (tasks/stage/evaluation.py): its D_T logits are in the
  cache before the batch (that pass was the previous batch's cost); its D_F rows are computed in
  the batch and dropped after it (purge).
- Rates come with Wilson 95% intervals over seeds (few runs: wide intervals, stated as such).

Writes benchmarks/results/gate_power.{md,json,png}.

Usage:
    nice -n 10 python benchmarks/gate_power.py              # about 6-10 minutes on 2 shared cores
    nice -n 10 python benchmarks/gate_power.py --quick      # 2 seeds, sizes 1/10/100: checks the script
    nice -n 10 python benchmarks/gate_power.py --source fashion_mnist --train-subset 4000 --test-subset 2000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from protocol import production_and_pool, with_data_overrides  # this folder: on sys.path when run as a script

from unlearn.attacks.signals import SignalCache
from unlearn.config import load_params
from unlearn.data import load_source
from unlearn.gate import DELETION_COST, FAIL, INCONCLUSIVE, PASS, gate_decision
from unlearn.gate_utility import LearningCurve
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.models import build_model
from unlearn.references import ReferenceBank
from unlearn.training import SGDRecipe, seeded_model, to_float, train_model
from unlearn.verification import EvalSets, gate_scores, model_evidence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROLES = ("parent", "retrain", "amun")
N_REFERENCES = 4


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 300, 1000])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="output path without suffix (default: "
                        "benchmarks/results/gate_power, or gate_power_<source> for another source)")
    parser.add_argument("--source", default=None, help="data.source instead of params.yaml's (e.g. fashion_mnist: "
                        "Debian's real Fashion-MNIST files)")
    parser.add_argument("--train-subset", type=int, default=None, help="data.train_subset (seeded by split_seed)")
    parser.add_argument("--test-subset", type=int, default=None, help="data.test_subset (seeded by split_seed)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs instead of params.yaml's")
    parser.add_argument("--no-reference-jackknife", action="store_true",
                        help="intervals over samples only, as before the reference jackknife (to price its power; "
                        "writes <out>_no_jackknife)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sizes = 2, [1, 10, 100]
    torch.set_num_threads(1)  # deterministic CPU runs; the machine is shared
    params = with_data_overrides(load_params(REPO / "params.yaml"), args)
    if args.out is None:
        suffix = "" if params.data.source == "digits" else f"_{params.data.source}"
        args.out = str(RESULTS / f"gate_power{suffix}")
        if args.no_reference_jackknife:
            args.out += "_no_jackknife"
    gate = params.gate
    recipe = SGDRecipe.from_config(params.train)
    source = load_source(params.data)
    images = to_float(source.images)
    labels = torch.tensor(source.labels)
    position = {sample_id: i for i, sample_id in enumerate(source.ids.tolist())}
    production, pool = production_and_pool(source, params)
    test = np.flatnonzero(source.splits == "test")
    sizes = [min(n, len(production) - 1) for n in args.sizes]
    channels, classes = images.shape[1], int(labels.max()) + 1

    def factory() -> torch.nn.Module:
        return build_model(params.model.name, channels, classes)

    def train(idx: np.ndarray, seed: int) -> tuple[torch.nn.Module, float]:
        start = time.process_time()
        model = train_model(seeded_model(factory, seed), images[idx], labels[idx], recipe, device="cpu", seed=seed)
        return model, time.process_time() - start

    def tensor_set(idx: np.ndarray) -> TensorSet:
        return TensorSet(images[idx], labels[idx])

    options = dict(params.verify.attack_options)
    jackknife = not args.no_reference_jackknife
    runs, costs, retrain_cpu, warm_cpu = [], [], [], []
    ref_cache = SignalCache(tempfile.mkdtemp(prefix="gate-power-signals-"))
    started = time.time()
    for seed in range(args.seeds):
        parent, parent_cpu = train(production, 1000 + seed)
        retrain_cpu.append(parent_cpu)
        bank = ReferenceBank(RESULTS / ".gate_power_refs_unused")  # planning only; nothing is written
        plans = bank.plan(source.ids[pool], count=N_REFERENCES, recipe_key="bench", seed=seed)
        references = [train(np.array([position[i] for i in plan.members]), plan.seed)[0] for plan in plans]
        # Pool references never change while they live: their logits on every production and test
        # sample are computed once per reference set, as the pipeline's references stage warms its
        # SignalCache (tasks/stage/references.py), outside the per-batch timing and reported apart.
        start = time.process_time()
        scored = np.concatenate([production, test])
        for r in references:
            ref_cache.logits(r, scored.astype(str), images[scored], augmentations="none", device="cpu")
        warm_cpu.append({"seed": seed, "samples": int(len(scored)), "cpu_s": time.process_time() - start,
                         "retrain_cpu_s": parent_cpu})

        # The parent is the champion, which was verified as a candidate of the batch before: its test-set
        # logits are in the signal cache from then (tasks/stage/evaluation.py caches every candidate's).
        # A batch computes them only for its own forget samples; purge drops those rows afterwards.
        parent_cache = SignalCache(tempfile.mkdtemp(prefix="gate-power-parent-"))
        parent_cache.logits(parent, test.astype(str), images[test], augmentations="none", device="cpu")

        rng = np.random.default_rng(seed)
        for n in sizes:
            forget = np.sort(rng.choice(production, size=n, replace=False))
            retain = np.setdiff1d(production, forget)
            record = {"seed": seed, "n_forget": int(n)}
            if n < gate.min_samples:
                for role in ROLES:
                    runs.append({**record, "role": role, "verdict": INCONCLUSIVE, "rule": "n < min_samples"})
                continue
            retrain, _ = train(retain, 2000 + seed)
            data = UnlearningData(tensor_set(forget), tensor_set(retain), classes, recipe, factory)
            amun = run_method("amun", parent, data, device="cpu", seed=seed, kwargs=params.method_kwargs("amun"),
                              recalibrate_bn=params.unlearn.recalibrate_bn)  # the pipeline's candidate
            # ids: the references' and the parent's signals are read from (and kept in) their caches
            sets = EvalSets(tensor_set(forget), tensor_set(retain[:0]), tensor_set(test), ids={
                "forget": forget.astype(str), "retain": forget[:0].astype(str), "test": test.astype(str)})
            start = time.process_time()
            ref_evidence = [model_evidence(r, sets, device="cpu", cache=ref_cache, with_retain=False)
                            for r in references]
            parent_evidence = model_evidence(parent, sets, device="cpu", cache=parent_cache, with_retain=False)
            parent_scores = gate_scores(parent_evidence, ref_evidence, attacks=gate.attacks,
                                        attack_options=options, seed=seed, jackknife=jackknife)
            curve = LearningCurve(  # what the deletion is estimated to cost an exact retrain (explains utility fails)
                np.stack([np.asarray(e.test.correct, dtype=np.float64) for e in ref_evidence]),
                tuple(len(plan.members) for plan in plans), len(production))
            setup_cpu = time.process_time() - start
            parent_cache.drop_ids(set(forget.astype(str)))  # as purge does once the batch is applied
            for role, model in (("parent", parent), ("retrain", retrain), ("amun", amun)):
                start = time.process_time()
                scores = gate_scores(model_evidence(model, sets, device="cpu", with_retain=False), ref_evidence,
                                     attacks=gate.attacks, attack_options=options, seed=seed, jackknife=jackknife)
                decision = gate_decision(
                    scores, parent_scores, attacks=gate.attacks,
                    accuracy_checks=gate.accuracy_checks, alpha=gate.alpha, margin_fraction=gate.margin_fraction,
                    resamples=gate.resamples, seed=gate.seed, min_samples=gate.min_samples,
                    utility_labels=sets.test.labels.numpy(),
                    labels=(sets.forget.labels.numpy(), sets.test.labels.numpy()),
                    utility_loss_fraction=gate.utility_loss_fraction, utility_loss_floor=gate.utility_loss_floor,
                    deleted_share=n / len(production),  # sets.retain is empty here
                    learning_curve=curve)
                cpu = time.process_time() - start
                if role == "amun":
                    costs.append({"seed": seed, "n_forget": int(n), "verify_cpu_s": setup_cpu + cpu,
                                  "retrain_cpu_s": parent_cpu})
                costly = [c.metric for c in decision.checks if c.verdict == FAIL and DELETION_COST in c.reason]
                runs.append({**record, "role": role, "verdict": decision.verdict, "reason": decision.reason,
                             "failed": [c.metric for c in decision.checks if c.verdict == FAIL],
                             "utility_fail_within_deletion_cost": bool(costly),
                             "parent_detected": decision.parent_detected,
                             "checks": [{k: c[k] for k in ("metric", "verdict", "estimate", "ci_low", "ci_high",
                                                           "margin", "parent_excess", "parent_ci_low")}
                                        for c in decision.to_dict()["checks"]]})
            print(f"seed {seed} n {n}: " + ", ".join(f"{r['role']} {r['verdict']}" for r in runs[-3:]),
                  f"({time.time() - started:.0f} s)", flush=True)
        shutil.rmtree(parent_cache.root, ignore_errors=True)
    shutil.rmtree(ref_cache.root, ignore_errors=True)
    summary = summarise(runs, costs, sizes)
    warm = [w["cpu_s"] / w["retrain_cpu_s"] for w in warm_cpu]
    summary["overall"]["reference_warmup_fraction_of_retrain_median"] = float(np.median(warm)) if warm else None
    summary["overall"]["reference_warmup"] = warm_cpu
    write(args, params, runs, costs, summary, sizes, time.time() - started)
    return 0


def summarise(runs: list[dict], costs: list[dict], sizes: list[int]) -> dict:
    out: dict = {"by_size": {}, "overall": {}}
    for n in sizes:
        row = {}
        for role in ROLES:
            verdicts = [r["verdict"] for r in runs if r["n_forget"] == n and r["role"] == role]
            counts = {v: verdicts.count(v) for v in (PASS, FAIL, INCONCLUSIVE)}
            row[role] = {"runs": len(verdicts), **counts,
                         "inconclusive_rate": counts[INCONCLUSIVE] / len(verdicts) if verdicts else float("nan"),
                         "inconclusive_ci95": wilson(counts[INCONCLUSIVE], len(verdicts))}
        out["by_size"][str(n)] = row
    parent_conclusive = [r for r in runs if r["role"] == "parent" and r["verdict"] != INCONCLUSIVE]
    parent_pass = sum(r["verdict"] == PASS for r in runs if r["role"] == "parent")
    retrains = [r for r in runs if r["role"] == "retrain"]
    retrain_fail = sum(r["verdict"] == FAIL for r in retrains)
    amun = [r for r in runs if r["role"] == "amun"]
    amun_pass = sum(r["verdict"] == PASS for r in amun)
    fractions = [c["verify_cpu_s"] / c["retrain_cpu_s"] for c in costs]
    out["utility_fails"] = {role: {
        "fails": sum(r["verdict"] == FAIL for r in runs if r["role"] == role),
        "utility_only": sum(r.get("failed") == ["utility"] for r in runs if r["role"] == role),
        "utility_within_deletion_cost": sum(bool(r.get("utility_fail_within_deletion_cost")) for r in runs
                                            if r["role"] == role)} for role in ROLES}
    out["overall"] = {
        "parent_false_pass": parent_pass, "parent_conclusive": len(parent_conclusive),
        "parent_runs": sum(r["role"] == "parent" for r in runs),
        "parent_false_pass_rate_when_conclusive": parent_pass / len(parent_conclusive) if parent_conclusive else None,
        "retrain_false_fail": retrain_fail, "retrain_runs": len(retrains),
        "retrain_false_fail_rate": retrain_fail / len(retrains), "retrain_false_fail_ci95": wilson(retrain_fail,
                                                                                                     len(retrains)),
        "amun_pass": amun_pass, "amun_runs": len(amun), "amun_pass_rate": amun_pass / len(amun),
        "amun_pass_ci95": wilson(amun_pass, len(amun)),
        "verify_fraction_of_retrain_median": float(np.median(fractions)) if fractions else None,
        "verify_fraction_of_retrain_max": float(np.max(fractions)) if fractions else None,
    }
    return out


def write(args, params, runs, costs, summary, sizes, elapsed) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "nice -n 10 python benchmarks/gate_power.py " + " ".join(sys.argv[1:])
    gate = params.gate
    payload = {"command": command.strip(), "seeds": list(range(args.seeds)), "sizes": sizes,
               "gate": {k: getattr(gate, k) for k in ("mode", "attacks", "accuracy_checks", "alpha",
                                                      "margin_fraction", "utility_loss_fraction", "resamples",
                                                      "seed", "min_samples")},
               "references": N_REFERENCES, "pool_fraction": params.verify.references.pool_fraction,
               "reference_jackknife": not args.no_reference_jackknife,
               "summary": summary, "costs": costs, "runs": runs, "elapsed_s": elapsed,
               "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    Path(f"{out}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    o = summary["overall"]
    lines = [
        f"# Gate power (issue #12): {params.data.source}, {params.model.name}, CPU", "",
        f"Data: {params.data.source}, train subset {params.data.train_subset or 'all'}, test subset "
        f"{params.data.test_subset or 'all'}; recipe: {params.train.epochs} epochs, batch {params.train.batch_size}, "
        f"lr {params.train.lr}. AMUN: params.yaml profile `{params.data.source}/{params.model.name}` where one "
        "exists.", "",
        f"Command: `{payload['command']}` ({elapsed / 60:.1f} min wall on a shared 2-core machine). "
        f"Seeds {payload['seeds']}; gate = params.yaml `gate` section: mode {gate.mode}, attacks "
        f"{list(gate.attacks)}, accuracy checks {list(gate.accuracy_checks)}, alpha {gate.alpha} "
        f"({100 * (1 - 2 * gate.alpha):g}% paired-bootstrap intervals), margin {gate.margin_fraction} x parent excess "
        f"(utility: min({gate.utility_loss_fraction}, {gate.utility_loss_floor} + the deleted share) x the parent's "
        "skill, one-sided; "
        + "a fail not shown beyond what the references' learning curve estimates the deletion costs an exact retrain "
        "says so; no verdict depends on it), "
        + f"{gate.resamples} resamples, min_samples {gate.min_samples}. {N_REFERENCES} references on the reference "
        f"pool "
        f"(pool_fraction {params.verify.references.pool_fraction}); negatives: the whole test split. Intervals: "
        + ("the forget and test samples only (`--no-reference-jackknife`, as before the jackknife). "
           if not payload["reference_jackknife"] else
           f"the forget and test samples, plus the leave-one-out jackknife over the {N_REFERENCES} references. ")
        + "Every candidate is gated against the untouched parent as positive control.", "",
        "## Error rates and pass rate (all sizes pooled; Wilson 95% intervals over runs)", "",
        "| quantity | value | target |", "|---|---|---|",
        f"| parent passes (false pass) | {o['parent_false_pass']} of {o['parent_runs']} runs; "
        f"{o['parent_conclusive']} conclusive | 0 whenever the control is conclusive |",
        f"| exact retrain fails (false fail) | {o['retrain_false_fail']} of {o['retrain_runs']} "
        f"({100 * o['retrain_false_fail_rate']:.0f}%, CI {fmt_ci(o['retrain_false_fail_ci95'])}) | <= 5% |",
        f"| AMUN passes | {o['amun_pass']} of {o['amun_runs']} ({100 * o['amun_pass_rate']:.0f}%, "
        f"CI {fmt_ci(o['amun_pass_ci95'])}) | -- |",
        f"| per-batch verification CPU / one retrain CPU | median {pct(o['verify_fraction_of_retrain_median'])}, "
        f"max {pct(o['verify_fraction_of_retrain_max'])} | <= 5% |", "",
        "## Verdicts by forget-set size", "",
        "| n_forget | role | pass | fail | inconclusive | inconclusive rate (95% CI) |", "|---|---|---|---|---|---|"]
    for n in sizes:
        for role in ROLES:
            r = summary["by_size"][str(n)][role]
            lines.append(f"| {n} | {role} | {r[PASS]} | {r[FAIL]} | {r[INCONCLUSIVE]} | "
                         f"{pct(r['inconclusive_rate'])} ({fmt_ci(r['inconclusive_ci95'])}) |")
    fails = summary["utility_fails"]
    lines += ["", "## Fails, and utility fails within the deletion's estimated cost", "",
              "The references' learning curve (skill linear in log training-set size between the references' size "
              "and the parent's) estimates what each deletion costs an exact retrain; a `utility` fail whose loss is "
              "not shown beyond that estimate says so in its reason (the verdict stands).", "",
              "| role | fails | on utility alone | utility fails within the deletion's estimated cost |",
              "|---|---|---|---|"]
    for role in ROLES:
        f = fails[role]
        lines.append(f"| {role} | {f['fails']} | {f['utility_only']} | {f['utility_within_deletion_cost']} |")
    lines += ["", "## Why: parent excess, margin and interval per metric (median over seeds)", "",
              "| n_forget | role | metric | candidate - target | 90% CI half-width | margin | parent excess |",
              "|---|---|---|---|---|---|---|"]
    for n in sizes:
        for role in ROLES:
            checks = [c for r in runs if r["n_forget"] == n and r["role"] == role for c in r.get("checks", [])]
            for metric in sorted({c["metric"] for c in checks}):
                mine = [c for c in checks if c["metric"] == metric]
                with warnings.catch_warnings():  # margin is NaN (no control) in every run of some cells
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = {k: float(np.nanmedian([c[k] for c in mine]))
                           for k in ("estimate", "margin", "parent_excess")}
                half = float(np.median([(c["ci_high"] - c["ci_low"]) / 2 for c in mine]))
                lines.append(f"| {n} | {role} | {metric} | {med['estimate']:+.4f} | {half:.4f} | "
                             f"{med['margin']:.4f} | {med['parent_excess']:+.4f} |")
    lines += ["", "## Per-metric decisions (diagnostic: the gate's verdict is their intersection)", "",
              "Runs with n_forget >= min_samples. 'no control': the parent was not detected on that metric.", "",
              "| role | metric | pass | fail | inconclusive (of which no control) |", "|---|---|---|---|---|"]
    for role in ROLES:
        checks = [c for r in runs if r["role"] == role for c in r.get("checks", [])]
        for metric in sorted({c["metric"] for c in checks}):
            mine = [c for c in checks if c["metric"] == metric]
            verdicts = [c["verdict"] for c in mine]
            no_control = sum(c["margin"] != c["margin"] for c in mine)
            lines.append(f"| {role} | {metric} | {verdicts.count(PASS)} | {verdicts.count(FAIL)} | "
                         f"{verdicts.count(INCONCLUSIVE)} ({no_control}) |")
    cost_rows = {n: [c["verify_cpu_s"] / c["retrain_cpu_s"] for c in costs if c["n_forget"] == n] for n in sizes}
    lines += ["", "## Per-batch verification cost by size (CPU seconds / one retrain's CPU seconds)", "",
              "| n_forget | median | max |", "|---|---|---|"]
    lines += [f"| {n} | {pct(float(np.median(v)))} | {pct(float(np.max(v)))} |" for n, v in cost_rows.items() if v]
    lines += ["", "Per batch: the forward passes of the candidate on D_F and D_T and of the parent (positive "
              "control) on D_F, reading the parent's D_T logits (cached when it was verified as the previous "
              "batch's candidate, as the pipeline does) and the references' from the signal cache, the attacks "
              "and the bootstrap gate. "
              "Once per reference set (not per batch, like training the references): their logits on every "
              "production and test sample, which the pipeline's references stage writes into its signal "
              "cache when it trains them (median "
              f"{pct(o.get('reference_warmup_fraction_of_retrain_median'))} of one retrain, "
              f"{N_REFERENCES} references)."]
    lines += ["", "Sizes below min_samples are inconclusive by rule (no model trained). With few seeds per "
              "cell the rate intervals are wide; they are reported, not hidden.", ""]
    Path(f"{out}.md").write_text("\n".join(lines))
    plot(summary, sizes, Path(f"{out}.png"), params.data.source)


def pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def fmt_ci(ci) -> str:
    return f"[{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]" if ci[0] == ci[0] else "n/a"


def plot(summary: dict, sizes: list[int], path: Path, source: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for role, marker in zip(ROLES, "osd", strict=True):
        rates = [summary["by_size"][str(n)][role]["inconclusive_rate"] for n in sizes]
        cis = np.array([summary["by_size"][str(n)][role]["inconclusive_ci95"] for n in sizes])
        ax.errorbar(sizes, rates, yerr=[np.array(rates) - cis[:, 0], cis[:, 1] - np.array(rates)],
                    marker=marker, capsize=3, label=role)
    ax.set_xscale("log")
    ax.set_xlabel("forget-set size (samples)")
    ax.set_ylabel("inconclusive rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Gate: inconclusive verdicts vs forget-set size ({source})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
