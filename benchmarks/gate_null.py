"""Benchmark: the gate with no membership signal at all, per ``alpha`` and forget-set size.

Why: the gate's positive control says the evidence has power when the parent's excess over the never-trained
target is detected. With no signal, "detected" should happen at the nominal rate alpha, and a candidate must
never pass (passing needs the parent detected AND the candidate's interval inside the margin). This measures
both, which is where the configuration's limits on ``gate.alpha`` and ``gate.min_samples`` come from
(unlearn/config.py): percentile bootstrap intervals under-cover on few samples, and a large alpha makes a
signal-free parent look detected.

Protocol: synthetic scores, no model. Per trial (seeded by its index) the parent and the candidate each score
``n_forget`` members and ``--negatives`` non-members as independent standard normals (one gated attack, no
membership shift) and 90%-correct accuracy vectors; ``unlearn.gate.gate_decision`` decides with
``margin_fraction`` 0.5, ``--resamples`` resamples and no accuracy check. Reported per (alpha, n_forget): the
share of trials whose parent counted as detected and the share that passed, with Wilson 95% intervals.

Writes benchmarks/results/gate_null.{md,json}.

Usage:
    nice -n 10 python benchmarks/gate_null.py       # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from gate_power import wilson  # this folder: on sys.path when run as a script

from unlearn.gate import PASS, ScoredModel, gate_decision

RESULTS = Path(__file__).resolve().parent / "results"


def signal_free(rng: np.random.Generator, n_forget: int, n_negative: int) -> ScoredModel:
    return ScoredModel({"a": rng.normal(size=n_forget)}, {"a": rng.normal(size=n_negative)},
                       (rng.random(n_forget) < 0.9).astype(float), (rng.random(n_negative) < 0.9).astype(float))


def run(alpha: float, n_forget: int, *, trials: int, negatives: int, resamples: int) -> dict:
    detected = passed = 0
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        parent, candidate = signal_free(rng, n_forget, negatives), signal_free(rng, n_forget, negatives)
        decision = gate_decision(candidate, parent, attacks=["a"], accuracy_checks=(), alpha=alpha,
                                 margin_fraction=0.5, resamples=resamples, seed=trial, min_samples=2)
        detected += bool(decision.checks[0].parent_detected)
        passed += decision.verdict == PASS
    return {"alpha": alpha, "n_forget": n_forget, "trials": trials, "detected": detected, "passed": passed,
            "detected_ci": wilson(detected, trials), "passed_ci": wilson(passed, trials)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.45])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20, 50])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--negatives", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=400)
    args = parser.parse_args(argv)
    started = time.time()
    rows = [run(a, n, trials=args.trials, negatives=args.negatives, resamples=args.resamples)
            for a in args.alphas for n in args.sizes]
    command = "python benchmarks/gate_null.py " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate_null.json").write_text(json.dumps(
        {"command": command.strip(), "rows": rows, "negatives": args.negatives, "resamples": args.resamples,
         "seconds": round(time.time() - started, 1), "python": platform.python_version()}, indent=2) + "\n")
    lines = [
        "# The gate with no membership signal: how often the parent counts as detected, how often a candidate passes",
        "",
        f"Command: `{command.strip()}` ({time.time() - started:.0f} s). Synthetic scores: parent and candidate "
        f"score {args.negatives} negatives and n_forget members as independent standard normals; one gated "
        f"attack, margin_fraction 0.5, {args.resamples} resamples, trial i seeded with i. Nominal detection "
        "rate: alpha. Wilson 95% intervals.",
        "",
        "| alpha | n_forget | parent detected | 95% CI | candidate passed | 95% CI |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lo, hi = r["detected_ci"]
        plo, phi = r["passed_ci"]
        lines.append(f"| {r['alpha']:g} | {r['n_forget']} | {r['detected'] / r['trials']:.1%} | "
                     f"[{lo:.1%}, {hi:.1%}] | {r['passed']}/{r['trials']} | [{plo:.1%}, {phi:.1%}] |")
    lines += ["", "The configuration allows alpha <= 0.05 and min_samples >= 10 (unlearn/config.py)."]
    (RESULTS / "gate_null.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
