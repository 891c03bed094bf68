"""CovarNav on the embedded 8x8 digits: forget a random 10% of the training split, and a whole class.

Prints forget / retain / test accuracy, the mean true-label confidence on the forget set and wall
time for the original model, retraining from scratch on the retain set (the reference), CovarNav,
and CovarNav without the projection (threshold 0, an ablation). Class forgetting is run with both
``inverted_classes`` settings. Single-threaded, for timings that do not depend on machine load.

Usage: .venv/bin/python benchmarks/covarnav_digits.py [key=value ...]   (covarnav kwargs, YAML values)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import yaml

from unlearn.config import DataConfig
from unlearn.data import load_source
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.models import build_model
from unlearn.training import SGDRecipe, accuracy, predict_logits, to_float, train_model


def _confidence(model, x, y) -> float:
    return predict_logits(model, x, device="cpu").softmax(1)[torch.arange(len(y)), y].mean().item()


def main() -> None:
    torch.set_num_threads(1)
    kwargs = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    src = load_source(DataConfig())
    train, test = src.splits == "train", src.splits == "test"
    x_tr, y_tr = to_float(src.images[train]), torch.as_tensor(src.labels[train]).long()
    x_te, y_te = to_float(src.images[test]), torch.as_tensor(src.labels[test]).long()
    recipe = SGDRecipe(30, 64, 0.05)
    factory = lambda: build_model("small_cnn", 1, 10)  # noqa: E731
    torch.manual_seed(0)
    t0 = time.perf_counter()
    original = train_model(factory(), x_tr, y_tr, recipe, device="cpu", seed=0)
    train_wall = time.perf_counter() - t0
    print(f"covarnav kwargs: {kwargs or 'defaults'}; {len(y_tr)} train / {len(y_te)} test")
    rng = np.random.default_rng(0)
    random_mask = torch.zeros(len(y_tr), dtype=torch.bool)
    random_mask[rng.choice(len(y_tr), size=len(y_tr) // 10, replace=False)] = True
    settings = {
        "random 10%": (random_mask, [("covarnav", {}), ("no-projection", {"threshold": 0.0})]),
        "class 0": (y_tr == 0, [("covarnav", {}), ("covarnav others", {"inverted_classes": "others"}),
                                ("no-projection", {"threshold": 0.0})]),
    }
    for name, (mask, variants) in settings.items():
        data = UnlearningData(TensorSet(x_tr[mask], y_tr[mask]), None, 10, recipe, factory)
        is_class = name.startswith("class")
        keep = y_te != 0 if is_class else torch.ones(len(y_te), dtype=torch.bool)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        retrained = train_model(factory(), x_tr[~mask], y_tr[~mask], recipe, device="cpu", seed=0)
        rows = [("original", original, train_wall), ("retrain", retrained, time.perf_counter() - t0)]
        for label, extra in variants:
            t0 = time.perf_counter()
            model = run_method("covarnav", original, data, device="cpu", seed=0, kwargs={**kwargs, **extra})
            rows.append((label, model, time.perf_counter() - t0))
        test_name = "test(classes 1-9)" if is_class else "test"
        print(f"--- {name}: |D_F| = {int(mask.sum())}")
        print(f"{'model':16s} {'forget':>6s} {'conf_F':>6s} {'retain':>6s} {test_name:>17s}"
              f"{' test(class 0)' if is_class else ''} {'wall':>7s}")
        for label, model, wall in rows:
            line = (f"{label:16s} {accuracy(model, x_tr[mask], y_tr[mask], device='cpu'):6.3f} "
                    f"{_confidence(model, x_tr[mask], y_tr[mask]):6.3f} "
                    f"{accuracy(model, x_tr[~mask], y_tr[~mask], device='cpu'):6.3f} "
                    f"{accuracy(model, x_te[keep], y_te[keep], device='cpu'):17.3f}")
            if is_class:
                line += f" {accuracy(model, x_te[~keep], y_te[~keep], device='cpu'):13.3f}"
            print(f"{line} {wall:6.2f}s")


if __name__ == "__main__":
    main()
