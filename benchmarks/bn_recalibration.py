"""Benchmark: what stale batch-norm statistics do to each method's model, weights held fixed.

Why: the CPU Fashion-MNIST table (methods_fashion_mnist.md) showed AMUN, SalUn, random labels and
l1-sparse losing 5-18 points of accuracy in one repetition and not in the others. This script
separates the weights a method produced from the running statistics it left: every method runs
ONCE per repetition, with ``recalibrate_bn`` off, and the same model is evaluated twice, with the
statistics as the method left them and with them recomputed on D_R
(``training.recalibrate_batchnorm``, what ``unlearn.recalibrate_bn`` does after a method). The
weights are identical in both columns, so any difference is the statistics alone.

Protocol as benchmarks/methods.py (its seeds: original 100+i, forget 200+i, run 300+i; target the
mean of 3 retrains; RMIA with 4 references), hyperparameters from params.yaml's profile as it is
(selected with or without recalibration: the file says which). Writes
benchmarks/results/bn_recalibration_<dataset>[_<model>].{json,md}.

Usage:
    nice -n 10 python benchmarks/bn_recalibration.py --dataset fashion_mnist --train-size 2000 \
        --test-size 1000 --pool 2 --epochs 30 --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import METRICS, evaluate, gap, load_data, prepare_repetition, t_interval  # noqa: E402

from unlearn.config import load_params  # noqa: E402
from unlearn.methods import METHODS, TensorSet, run_method  # noqa: E402
from unlearn.training import SGDRecipe, recalibrate_batchnorm  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SHOWN = ("UA", "RA", "TA", "MIA")


def repetition(i: int, data, args, params, recipe) -> dict:
    """One (original, forget subset): every method once, evaluated with stale and recomputed statistics."""
    x_train, y_train, test = data
    ref = prepare_repetition(i, x_train, y_train, test, args, recipe)
    rows = {}
    for name in args.methods.split(","):
        kwargs = params.unlearn.kwargs_for(name, args.dataset, args.model)
        model = run_method(name, ref.original, ref.data, device=args.device, seed=300 + i, kwargs=kwargs)
        stale = evaluate(model, ref, args.device)
        fixed_model = copy.deepcopy(model)
        layers = recalibrate_batchnorm(fixed_model, ref.retain.images, device=args.device)
        fixed = evaluate(fixed_model.eval(), ref, args.device)
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), fixed_model.parameters(), strict=True))
        rows[name] = {"stale": {**stale, "gap": gap(stale, ref.target)},
                      "recomputed": {**fixed, "gap": gap(fixed, ref.target)},
                      "layers": layers, "same_weights": same}
        print(f"rep {i} {name}: TA {stale['TA']:.1f} -> {fixed['TA']:.1f}, gap {rows[name]['stale']['gap']:.2f} "
              f"-> {rows[name]['recomputed']['gap']:.2f}", flush=True)
    original = evaluate(ref.original, ref, args.device)
    return {"rows": rows, "original": original, "target": ref.target}


def summary(reps: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        entry = {}
        for mode in ("stale", "recomputed"):
            entry[mode] = {m: t_interval([r["rows"][name][mode][m] for r in reps]) for m in (*SHOWN, "gap")}
            entry[mode]["per_rep_TA"] = [r["rows"][name][mode]["TA"] for r in reps]
            entry[mode]["per_rep_gap"] = [r["rows"][name][mode]["gap"] for r in reps]
        entry["same_weights"] = all(r["rows"][name]["same_weights"] for r in reps)
        out[name] = entry
    out["original"] = {"TA": t_interval([r["original"]["TA"] for r in reps]),
                       "RA": t_interval([r["original"]["RA"] for r in reps])}
    return out


def markdown(result: dict, meta: dict) -> str:
    def cell(pair) -> str:
        mean, half = pair
        return f"{mean:.2f}" + ("" if np.isnan(half) else f" ± {half:.2f}")

    lines = [f"# Batch-norm statistics, stale vs recomputed on D_R: {meta['dataset']}, {meta['model']}, "
             f"{meta['device']}", "", f"Command: `{meta['command']}`", "",
             f"{meta['seeds']} repetitions with benchmarks/methods.py's seeds and target (mean of {meta['retrains']} "
             f"retrains, RMIA with {meta['references']} references); hyperparameters: params.yaml profile "
             f"`{meta['profile']}` as committed at {meta['git']}. Each method ran ONCE per repetition; the same "
             "weights were evaluated with the running statistics the method left (**stale**) and with them "
             "recomputed on D_R (**recomputed**, what `unlearn.recalibrate_bn` does). Weights identical in both: "
             f"{'yes, every row' if all(result[n]['same_weights'] for n in meta['methods']) else 'NO'}. Cells: "
             f"mean ± 95% Student-t half-width. Original model: RA {cell(result['original']['RA'])}, TA "
             f"{cell(result['original']['TA'])}. Wall time {meta['wall_seconds']:.0f} s.", "",
             "| method | statistics | UA | RA | TA | RMIA AUC | Avg Gap | TA per repetition | gap per repetition |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in meta["methods"]:
        for mode in ("stale", "recomputed"):
            e = result[name][mode]
            lines.append(f"| {name if mode == 'stale' else ''} | {mode} | "
                         + " | ".join(cell(e[m]) for m in (*SHOWN, "gap")) + " | "
                         + ", ".join(f"{v:.1f}" for v in e["per_rep_TA"]) + " | "
                         + ", ".join(f"{v:.2f}" for v in e["per_rep_gap"]) + " |")
    return "\n".join(lines) + "\n"


def git_state() -> str:
    """The commit whose params.yaml this run reads ("... with params.yaml modified" if the file differs)."""
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "unknown"
    if subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "params.yaml"]).returncode != 0:
        git += " with params.yaml modified"
    return git


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--retrains", type=int, default=3)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--methods", default="all", help="comma-separated, or all (every method but retrain)")
    args = parser.parse_args()
    if args.methods == "all":
        args.methods = ",".join(n for n in METHODS.names() if n != "retrain")
    started = time.perf_counter()
    git = git_state()  # now, with the params.yaml this run reads (it may be edited while the run goes on)
    params = load_params(REPO / "params.yaml")
    x_train, y_train, x_test, y_test = load_data(args.dataset, args.data_path, train_size=args.train_size,
                                                 test_size=args.test_size, pool=args.pool)
    recipe = replace(SGDRecipe.from_config(params.train), epochs=args.epochs, batch_size=args.batch_size,
                     augment=args.augment)
    data = (x_train, y_train, TensorSet(x_test, y_test))
    reps = [repetition(i, data, args, params, recipe) for i in range(args.seeds)]
    names = args.methods.split(",")
    command = "nice -n 10 python benchmarks/bn_recalibration.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
        if v not in (None, False))
    key = params.unlearn.profile_key(args.dataset, args.model)
    meta = {"command": command, "dataset": args.dataset, "model": args.model, "device": args.device,
            "seeds": args.seeds, "retrains": args.retrains, "references": args.references, "methods": names,
            "profile": key if key in params.unlearn.profiles else "(none: defaults)", "git": git,
            "metrics": list(METRICS), "platform": platform.platform(), "torch": torch.__version__,
            "wall_seconds": time.perf_counter() - started}
    result = summary(reps, names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("bn_recalibration_" + args.dataset + ("" if args.model == "small_cnn" else f"_{args.model}"))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": result, "repetitions": reps},
                                                    indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(result, meta))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
