"""Calibrate AMUN's eps_init for a dataset, as the paper does once per dataset (App. E.1).

For each seed: train the baseline with params.yaml's recipe, draw 100 training samples, run
Algorithm 1 from a very small eps (0.01) and report the smallest eps on the doubling grid
within which 95% of them find an adversarial example. The paper's value for CIFAR-10 is 0.04;
params.yaml's ``unlearn.methods.amun.eps_init`` holds the value for the configured dataset, so
a deletion request does not pay for the calibration.

Writes benchmarks/results/amun_eps_init_<dataset>.{json,md}.
Usage: python benchmarks/amun_eps_init.py [--seeds 3] [--dataset digits]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from unlearn.config import DataConfig, load_params
from unlearn.data import load_source
from unlearn.methods import TensorSet
from unlearn.methods.amun import adversarial_set, choose_eps_init
from unlearn.models import build_model
from unlearn.training import SGDRecipe, to_float, train_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    source = load_source(DataConfig(source=args.dataset, source_path=args.data_path))
    train = source.splits == "train"
    x, y = to_float(source.images[train]), torch.as_tensor(source.labels[train])
    rows = []
    for seed in range(args.seeds):
        model = train_model(build_model(params.model.name, x.shape[1], int(y.max()) + 1), x, y,
                            SGDRecipe.from_config(params.train), device=args.device, seed=seed)
        pick = torch.as_tensor(np.random.default_rng(seed).choice(len(y), 100, replace=False))
        probe = TensorSet(x[pick], y[pick])
        started = time.perf_counter()
        eps = choose_eps_init(model, probe, probe_eps=0.01, probe_size=100, coverage=0.95, pgd_steps=50,
                              max_doublings=12, device=args.device, seed=seed)
        seconds = time.perf_counter() - started
        _, _, used = adversarial_set(model, probe, eps_init=0.01, pgd_steps=50, max_doublings=12,
                                     device=args.device)
        values, counts = np.unique(used.numpy().round(4), return_counts=True)
        rows.append({"seed": seed, "eps_init": eps, "probe_seconds": seconds,
                     "smallest_eps_histogram": {str(v): int(c) for v, c in zip(values, counts, strict=True)}})
        print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results" / f"amun_eps_init_{args.dataset}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = [f"# AMUN eps_init calibration ({args.dataset}, App. E.1: 95% of 100 probes)", "",
             "| seed | eps_init | probe seconds | smallest eps per probe (eps: count) |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['eps_init']} | {r['probe_seconds']:.1f} | {r['smallest_eps_histogram']} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
