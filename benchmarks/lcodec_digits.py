"""L-CODEC on the embedded digits: train small_cnn, forget a random 10%, report accuracy and time.

Usage: .venv/bin/python benchmarks/lcodec_digits.py ['{"l2_reg": 0.1, ...}' ...]

Each argument is a JSON dict of lcodec keyword arguments (default: the suggested digits
block). A key "_trace": false withholds the recorded training trace, so the method recomputes
it post hoc from D_R ∪ D_F, as it must in the pipeline (whose baseline training records none).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from unlearn.config import DataConfig
from unlearn.data import load_source
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.models import build_model
from unlearn.training import SGDRecipe, TrainingTrace, predict_logits, to_float, train_model

SUGGESTED = {"n_perturbations": 200, "l2_reg": 0.1, "epsilon": 0.1, "delta": 0.01}


def _scores(model, sets):
    parts = []
    for name, (images, labels) in zip(("forget", "retain", "test"), sets, strict=True):
        probs = predict_logits(model, images, device="cpu").softmax(1)
        acc = (probs.argmax(1) == labels).float().mean().item()
        conf = probs.gather(1, labels[:, None]).mean().item()
        parts.append(f"{name} {acc:.4f}/{conf:.4f}")
    return "acc/conf " + " ".join(parts)


def main() -> None:
    source = load_source(DataConfig())
    train, test = source.splits == "train", source.splits == "test"
    x, y = to_float(source.images[train]), torch.as_tensor(source.labels[train])
    x_test, y_test = to_float(source.images[test]), torch.as_tensor(source.labels[test])
    forget = torch.zeros(len(y), dtype=torch.bool)
    forget[np.random.default_rng(0).choice(len(y), size=len(y) // 10, replace=False)] = True
    recipe = SGDRecipe(30, 64, 0.05)
    factory = lambda: build_model("small_cnn", 1, 10)  # noqa: E731
    trace = TrainingTrace()
    started = time.perf_counter()
    torch.manual_seed(0)  # the initial weights
    original = train_model(factory(), x, y, recipe, device="cpu", seed=0, trace=trace)
    print(f"trained in {time.perf_counter() - started:.1f}s: n={len(y)}, forget={int(forget.sum())}, "
          f"test={len(y_test)}")
    sets = [(x[forget], y[forget]), (x[~forget], y[~forget]), (x_test, y_test)]
    print("before " + _scores(original, sets))
    for arg in sys.argv[1:] or [json.dumps(SUGGESTED)]:
        kwargs = json.loads(arg)
        use_trace = kwargs.pop("_trace", True)
        data = UnlearningData(TensorSet(*sets[0]), TensorSet(*sets[1]), 10, recipe, factory,
                              trace if use_trace else None)
        started = time.perf_counter()
        result = run_method("lcodec", original, data, device="cpu", seed=0, kwargs=kwargs)
        seconds = time.perf_counter() - started
        print(f"{arg}: {seconds:.1f}s  after " + _scores(result, sets), flush=True)


if __name__ == "__main__":
    main()
