"""Benchmark: every registered unlearning method against retraining, following AMUN's protocol.

Protocol (methods.md section 1; AMUN section 5.2):
- Settings: random forget of 10% and 50% of the training set, each with the retain set (D_R)
  and with the forget set only, plus class-wise forgetting (every training sample of one
  class). Methods that need D_R are not run in the forget-only settings.
- Seeds: for each seed s, an original model is trained with seed s and the forget subset (or
  class) is drawn with seed s; every method and the retrained reference run with seed s.
- Metrics: accuracy on D_F (UA, raw accuracy as in AMUN), D_R (RA), D_T (TA), and the
  forget-vs-test ROC-AUC of the loss-threshold attack (MIA; AMUN uses RMIA, which needs
  reference models: see the verification issue). Class-wise: TA is on the remaining classes
  and the attack compares D_F with unseen samples of the forgotten class.
- Avg Gap: mean over the 4 metrics of |metric - metric(retrain)| in percentage points, per
  seed, then mean and standard deviation over seeds.
- Cost: wall time of each method divided by the retrained reference's wall time, both
  measured in the same run.
Hyperparameters come from params.yaml (``unlearn.methods``); nothing is tuned on the test split.

Writes benchmarks/results/methods_<dataset>.{json,md,png}.

Usage:
    python benchmarks/methods.py                         # embedded digits, CPU, 3 seeds
    python benchmarks/methods.py --device cuda --dataset cifar10 --data-path DIR --model resnet18
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unlearn.attacks import compute_signals
from unlearn.config import DataConfig, load_params
from unlearn.data import load_source
from unlearn.methods import METHODS, TensorSet, UnlearningData, run_method
from unlearn.metrics import roc_auc
from unlearn.models import build_model
from unlearn.training import SGDRecipe, predict_logits, to_float, train_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METRICS = ("UA", "RA", "TA", "MIA")


def _subset(x: torch.Tensor, y: torch.Tensor, mask: np.ndarray) -> TensorSet:
    index = torch.as_tensor(np.flatnonzero(mask))
    return TensorSet(x[index], y[index])


def evaluate(model, forget: TensorSet, retain: TensorSet, test: TensorSet, mia_test: TensorSet,
             device: str) -> dict[str, float]:
    """UA/RA/TA in percent and the loss-threshold forget-vs-test AUC in percent.

    A model whose outputs are not finite (a method that diverged) is flagged ``diverged``; its
    non-finite losses count as the largest possible loss, so it is scored, not skipped.
    """
    out, diverged = {}, False
    for key, subset in (("UA", forget), ("RA", retain), ("TA", test)):
        logits = predict_logits(model, subset.images, device=device)
        diverged |= not bool(torch.isfinite(logits).all())
        out[key] = 100.0 * (logits.argmax(1) == subset.labels).float().mean().item()
    f_sig = compute_signals(predict_logits(model, forget.images, device=device), forget.labels)
    t_sig = compute_signals(predict_logits(model, mia_test.images, device=device), mia_test.labels)
    f_loss = np.nan_to_num(f_sig.loss, nan=np.inf, posinf=np.inf).clip(max=1e30)
    t_loss = np.nan_to_num(t_sig.loss, nan=np.inf, posinf=np.inf).clip(max=1e30)
    out["MIA"] = 100.0 * roc_auc(-f_loss, -t_loss)
    out["diverged"] = float(diverged)
    return out


def run_setting(setting: dict, seed: int, x_train, y_train, x_test, y_test, cfg) -> dict:
    """One seed of one setting: original, retrain and every method."""
    device, recipe, model_name = cfg["device"], cfg["recipe"], cfg["model"]
    n, classes = len(y_train), int(y_train.max()) + 1
    rng = np.random.default_rng(seed)
    if setting["kind"] == "class":
        forget_class = int(rng.integers(classes))
        forget_mask = (y_train == forget_class).numpy()
        test_keep = (y_test != forget_class).numpy()
        mia_mask = (y_test == forget_class).numpy()
    else:
        forget_mask = np.zeros(n, dtype=bool)
        forget_mask[rng.choice(n, size=int(round(setting["fraction"] * n)), replace=False)] = True
        test_keep = mia_mask = np.ones(len(y_test), dtype=bool)
    forget = _subset(x_train, y_train, forget_mask)
    retain = _subset(x_train, y_train, ~forget_mask)
    test = _subset(x_test, y_test, test_keep)
    mia_test = _subset(x_test, y_test, mia_mask)
    factory = lambda: build_model(model_name, x_train.shape[1], classes)  # noqa: E731
    torch.manual_seed(seed)
    original = train_model(factory(), x_train, y_train, recipe, device=device, seed=seed)
    full = UnlearningData(forget, retain, classes, recipe, factory)
    started = time.perf_counter()
    reference = run_method("retrain", original, full, device=device, seed=seed)
    retrain_seconds = time.perf_counter() - started
    rows = {"retrain": {**evaluate(reference, forget, retain, test, mia_test, device), "seconds": retrain_seconds}}
    rows["original"] = {**evaluate(original, forget, retain, test, mia_test, device), "seconds": 0.0}
    data = full if setting["with_retain"] else UnlearningData(forget, None, classes, recipe, factory)
    for name in METHODS.names():
        if name == "retrain":
            continue
        spec = METHODS.get(name)
        kwargs = cfg["params"].method_kwargs(name)
        if not setting["with_retain"] and "use_retain" in spec.bind({}):
            kwargs["use_retain"] = False
        if "n_train" in spec.bind({}) and kwargs.get("n_train") is None:
            kwargs["n_train"] = n  # the original training-set size is known even without D_R
        if not setting["with_retain"] and "retain" in spec.required_data(spec.bind(kwargs)):
            continue  # needs D_R: not applicable in the forget-only setting
        started = time.perf_counter()
        model = run_method(name, original, data, device=device, seed=seed, kwargs=kwargs)
        seconds = time.perf_counter() - started
        rows[name] = {**evaluate(model, forget, retain, test, mia_test, device), "seconds": seconds}
    for row in rows.values():
        row["gap"] = float(np.mean([abs(row[m] - rows["retrain"][m]) for m in METRICS]))
        row["time_ratio"] = row["seconds"] / retrain_seconds
    return rows


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every number of every method."""
    out = {}
    for name in per_seed[0]:
        runs = [r[name] for r in per_seed if name in r]
        out[name] = {key: {"mean": float(np.mean([r[key] for r in runs])),
                           "std": float(np.std([r[key] for r in runs]))} for key in runs[0]}
    return out


def markdown(results: dict, settings: list[dict], title: str) -> str:
    lines = [f"# {title}", ""]
    for setting in settings:
        table = results[setting["name"]]
        lines += [f"## {setting['label']}", "",
                  "| Method | UA | RA | TA | MIA AUC | Avg Gap | time / retrain |",
                  "|---|---|---|---|---|---|---|"]
        order = ["retrain", "original"] + sorted(k for k in table if k not in ("retrain", "original"))
        best = min((k for k in table if k not in ("retrain", "original")), key=lambda k: table[k]["gap"]["mean"])
        for name in order:
            row = table[name]
            cells = [f"{row[m]['mean']:.2f}±{row[m]['std']:.2f}" for m in METRICS]
            gap = f"{row['gap']['mean']:.2f}±{row['gap']['std']:.2f}"
            gap = f"**{gap}**" if name == best else gap
            ratio = "1.00" if name == "retrain" else "-" if name == "original" else f"{row['time_ratio']['mean']:.3f}"
            label = name + (" (diverged in some seeds)" if row["diverged"]["mean"] > 0 else "")
            lines.append(f"| {label} | {' | '.join(cells)} | {gap} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, settings: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        table = results[setting["name"]]
        for name, row in table.items():
            if name in ("retrain", "original"):
                continue
            ax.errorbar(row["time_ratio"]["mean"], row["gap"]["mean"], yerr=row["gap"]["std"], fmt="o")
            ax.annotate(name, (row["time_ratio"]["mean"], row["gap"]["mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("wall time / retrain")
        ax.set_ylabel("Avg Gap to retrain (points)")
        ax.set_title(setting["label"], fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "imagefolder"])
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--model", default=None, help="default: params.yaml model.name")
    parser.add_argument("--epochs", type=int, default=None, help="override the baseline recipe's epochs")
    parser.add_argument("--settings", default="r10,r10f,r50,r50f,class")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    params = load_params(REPO / "params.yaml")
    source = load_source(DataConfig(source=args.dataset, source_path=args.data_path))
    train, test = source.splits == "train", source.splits == "test"
    x_train, y_train = to_float(source.images[train]), torch.as_tensor(source.labels[train])
    x_test, y_test = to_float(source.images[test]), torch.as_tensor(source.labels[test])
    recipe = SGDRecipe.from_config(params.train)
    if args.epochs:
        recipe = replace(recipe, epochs=args.epochs)
    if args.dataset != "digits":
        recipe = replace(recipe, augment=True)
    cfg = {"device": args.device, "recipe": recipe, "model": args.model or params.model.name, "params": params}
    all_settings = {
        "r10": {"name": "r10", "label": "random 10%, with D_R", "kind": "random", "fraction": 0.1, "with_retain": True},
        "r10f": {"name": "r10f", "label": "random 10%, D_F only", "kind": "random", "fraction": 0.1,
                 "with_retain": False},
        "r50": {"name": "r50", "label": "random 50%, with D_R", "kind": "random", "fraction": 0.5, "with_retain": True},
        "r50f": {"name": "r50f", "label": "random 50%, D_F only", "kind": "random", "fraction": 0.5,
                 "with_retain": False},
        "class": {"name": "class", "label": "class-wise, with D_R", "kind": "class", "with_retain": True},
    }
    settings = [all_settings[s] for s in args.settings.split(",")]
    results, raw = {}, {}
    started = time.perf_counter()
    for setting in settings:
        per_seed = []
        for seed in range(args.seeds):
            per_seed.append(run_setting(setting, seed, x_train, y_train, x_test, y_test, cfg))
            print(f"{setting['name']} seed {seed} done ({time.perf_counter() - started:.0f}s)", flush=True)
        raw[setting["name"]] = per_seed
        results[setting["name"]] = aggregate(per_seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"methods_{args.dataset}"
    meta = {"dataset": args.dataset, "device": args.device, "seeds": args.seeds, "model": cfg["model"],
            "recipe": vars(recipe), "platform": platform.platform(), "wall_seconds": time.perf_counter() - started,
            "mia": "loss-threshold ROC-AUC, forget vs test (percent)"}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results, "per_seed": raw}, indent=2))
    title = (f"Unlearning methods vs retraining: {args.dataset}, {cfg['model']}, {args.seeds} seeds, "
             f"{args.device} (mean ± std; UA/RA/TA/MIA in %, Avg Gap in points)")
    stem.with_suffix(".md").write_text(markdown(results, settings, title))
    plot(results, settings, stem.with_suffix(".png"))
    print(markdown(results, settings, title))


if __name__ == "__main__":
    main()
