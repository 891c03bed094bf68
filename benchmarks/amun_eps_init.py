"""Calibrate AMUN's eps_init for a dataset, as the paper does once per dataset (App. E.1).

For each seed: train the baseline with params.yaml's recipe, draw 100 training samples, run
Algorithm 1 from a very small eps (0.01) and report the smallest eps on the doubling grid
within which 95% of them find an adversarial example. The paper's value for CIFAR-10 is 0.04;
the setting's profile in params.yaml (``unlearn.profiles."<source>/<model>".amun.eps_init``; a value
under ``unlearn.methods.amun`` would be shadowed by it) holds the value, so a deletion request does not
pay for the calibration.

With ``--train-size`` it calibrates on the originals of a ``select_hparams.py`` sweep instead: the same
seeded subset (``--pool``, ``--split-seed``), the same validation split carved off and never read, the
same original seeds (1000 + s) and recipe (``--epochs``, ``--batch-size``), so the value is the one for the
models that sweep tuned AMUN on.

Writes benchmarks/results/amun_eps_init_<dataset>[_<tag>].{json,md}.
Usage: python benchmarks/amun_eps_init.py [--seeds 3] [--dataset digits]
       python benchmarks/amun_eps_init.py --dataset fashion_mnist --train-size 2000 --pool 2 --epochs 30 \
           --batch-size 128 --tag e30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
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
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="default: params.yaml's model.name")
    parser.add_argument("--train-size", type=int, default=None,
                        help="calibrate on a select_hparams.py sweep's originals (its subset and tuning split)")
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--split-seed", type=int, default=7)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml's train.epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="default: params.yaml's train.batch_size")
    parser.add_argument("--tag", default=None, help="output name suffix")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    recipe = SGDRecipe.from_config(params.train)
    recipe = replace(recipe, epochs=args.epochs or recipe.epochs, batch_size=args.batch_size or recipe.batch_size)
    if args.train_size is None:
        source = load_source(DataConfig(source=args.dataset, source_path=args.data_path))
        train = source.splits == "train"
        x, y = to_float(source.images[train]), torch.as_tensor(source.labels[train])
        seed_of = lambda s: s  # noqa: E731
    else:  # the sweep's data: the validation part is carved off exactly as select_hparams.py does, and dropped
        from protocol import load_data, validation_mask

        x, y, _, _ = load_data(args.dataset, args.data_path, train_size=args.train_size, pool=args.pool,
                               seed=args.split_seed)
        keep = torch.as_tensor(np.flatnonzero(~validation_mask(len(y), args.val_fraction, args.split_seed)))
        x, y = x[keep], y[keep]
        seed_of = lambda s: 1000 + s  # noqa: E731 - the sweep's original seeds
    rows = []
    for s in range(args.seeds):
        seed = seed_of(s)
        torch.manual_seed(seed)
        model = train_model(build_model(args.model or params.model.name, x.shape[1], int(y.max()) + 1), x, y,
                            recipe, device=args.device, seed=seed)
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
    out = REPO / "benchmarks" / "results" / f"amun_eps_init_{args.dataset}{'_' + args.tag if args.tag else ''}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    command = "python benchmarks/amun_eps_init.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    lines = [f"# AMUN eps_init calibration ({args.dataset}, App. E.1: 95% of 100 probes)", "",
             f"Command: `{command}`. Recipe: {vars(recipe)}; images {list(x.shape[1:])}, {len(y)} training samples.",
             "",
             "| seed | eps_init | probe seconds | smallest eps per probe (eps: count) |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['eps_init']} | {r['probe_seconds']:.1f} | {r['smallest_eps_histogram']} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
