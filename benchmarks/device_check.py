"""Device check: what the core does on one accelerator, in one command, within about 8 minutes.

Three parts, each written to ``benchmarks/results/device_check_<device>[_quick].{md,json,png}``:

1. Trainer throughput: ``train_model`` as landed before the GPU work (``benchmarks/legacy_trainer.py``:
   per-step host copies, fp32, a host sync every step) against today's ``unlearn.training.train_model``
   (data resident on the device, bf16 autocast and channels_last on CUDA, no per-step sync), same model,
   data, recipe and seed; the new trainer also at a larger batch. Images per second over timed epochs
   after one warm-up epoch (cuDNN autotuning, allocator), with the device synchronised around each timing.
2. Reference models: ``unlearn.batched.train_models_batched`` (one vmapped model) against K models
   trained one by one with ``train_model``, K = 16, each on a random half of the data.
3. The AMUN protocol on real Fashion-MNIST: random 10% forget with D_R, every registered method with
   params.yaml's keyword arguments, against the mean of the retrained models. Per seed s: the original
   is trained with seed s, the forget set drawn with seed 1000 + s, the retrain initialised with seed
   2000 + s (not the original's weights), and the method run with seed s. UA/RA/TA are accuracies (%),
   MIA the loss-threshold ROC-AUC of forget vs test (%), Avg Gap the mean of the four absolute
   differences to the retrain, time the method's wall time over the retrain's. Mean, std and a 95%
   t-interval over seeds. A method that raises is reported with its error, not dropped.

Only torch, numpy, scipy, scikit-learn, matplotlib and pyyaml are needed: the script imports the
pure core (``unlearn``) and never the orchestration stack (``tests/core/test_device_check.py`` runs it
with prefect, mlflow, dvc and great_expectations blocked).

Usage:
    python benchmarks/device_check.py                       # CUDA, full size (about 5-8 min on one GPU)
    python benchmarks/device_check.py --device cpu --quick  # tiny CPU version (1-2 min), what the test runs

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (``scripts/install-datasets.sh``) or
``--data-path``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `unlearn` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks.legacy_trainer import legacy_train_model  # noqa: E402
from unlearn.batched import train_models_batched  # noqa: E402
from unlearn.config import DataConfig, load_params  # noqa: E402
from unlearn.data.sources import load_source  # noqa: E402
from unlearn.methods import METHODS, TensorSet, UnlearningData, run_method  # noqa: E402
from unlearn.metrics import roc_auc  # noqa: E402
from unlearn.models import build_model  # noqa: E402
from unlearn.training import SGDRecipe, predict_logits, seeded_model, to_float, train_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
METRICS = ("UA", "RA", "TA", "MIA")


@dataclass(frozen=True)
class Sizes:
    """How big each part is; ``full`` is for one GPU, ``quick`` a CPU smoke run."""

    model: str
    train: int  # Fashion-MNIST train samples (seeded subset)
    test: int
    pad_rgb: bool  # pad 28x28 to 32x32 and repeat to 3 channels (the ResNet-18 setting)
    downsample: int  # average-pool the 28x28 images by this factor (quick mode: 14x14, 4x less compute)
    recipe: SGDRecipe  # baseline and retrain recipe of the AMUN table
    seeds: int
    throughput_n: int
    throughput_batch: int
    throughput_big_batch: int
    throughput_epochs: int  # timed epochs (after one warm-up epoch)
    ref_models: int
    ref_n: int  # samples the references draw their halves from
    ref_recipe: SGDRecipe
    method_overrides: dict  # method -> kwargs replacing params.yaml's (quick mode only: shorter loops)


FULL = Sizes(model="resnet18", train=10_000, test=2_000, pad_rgb=True, downsample=1,
             recipe=SGDRecipe(15, 128, 0.1, augment=True), seeds=2,
             throughput_n=10_000, throughput_batch=128, throughput_big_batch=512, throughput_epochs=2,
             ref_models=16, ref_n=4_000, ref_recipe=SGDRecipe(2, 128, 0.1, augment=True),
             method_overrides={})
QUICK = Sizes(model="small_cnn", train=200, test=100, pad_rgb=False, downsample=2,
              recipe=SGDRecipe(4, 16, 0.05), seeds=2,
              throughput_n=192, throughput_batch=32, throughput_big_batch=96, throughput_epochs=1,
              ref_models=4, ref_n=96, ref_recipe=SGDRecipe(1, 16, 0.05),
              method_overrides={
                  "amun": {"pgd_steps": 5, "epochs": 1}, "amun_salun": {"pgd_steps": 5, "epochs": 1},
                  "covarnav": {"n_inverted": 8, "inversion_steps": 5, "epochs": 1},
                  "lcodec": {"n_perturbations": 10, "max_slices": 2, "max_params": 200},
                  "scrub": {"epochs": 1, "msteps": 1}, "neggrad_plus": {"epochs": 1},
                  "random_label": {"epochs": 1}, "salun": {"epochs": 1}, "l1_sparse": {"epochs": 1},
                  "boundary_shrink": {"epochs": 1}, "grad_ascent": {"epochs": 1}, "finetune": {"epochs": 1},
                  "dlfd": {"check_every": 1},
              })


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load_fashion(sizes: Sizes, data_path: str | None, seed: int = 0):
    """Seeded Fashion-MNIST subsets as float tensors (train x, y, test x, y)."""
    cfg = DataConfig(source="fashion_mnist", source_path=data_path, train_subset=sizes.train,
                     test_subset=sizes.test, split_seed=seed)
    source = load_source(cfg)
    images = to_float(source.images)  # (N, 1, 28, 28)
    if sizes.downsample > 1:
        images = F.avg_pool2d(images, sizes.downsample)
    if sizes.pad_rgb:
        images = F.pad(images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)  # (N, 3, 32, 32)
    labels = torch.as_tensor(source.labels)
    train = torch.as_tensor(source.splits == "train")
    return images[train], labels[train], images[~train], labels[~train]


# --------------------------------------------------------------------------- 1. trainer throughput


def _time_training(trainer, factory, x, y, recipe, device, epochs) -> float:
    """Images per second of ``trainer`` over ``epochs`` timed epochs (one warm-up epoch first)."""
    model = seeded_model(factory, 0)
    trainer(model, x, y, replace(recipe, epochs=1), device=device, seed=0)  # warm-up
    model = seeded_model(factory, 0)
    _sync(device)
    started = time.perf_counter()
    trainer(model, x, y, replace(recipe, epochs=epochs), device=device, seed=0)
    _sync(device)
    return epochs * len(y) / (time.perf_counter() - started)


def trainer_throughput(x, y, sizes: Sizes, device: str) -> dict:
    x, y = x[: sizes.throughput_n], y[: sizes.throughput_n]
    factory = lambda: build_model(sizes.model, x.shape[1], int(y.max()) + 1)  # noqa: E731
    recipe = replace(sizes.recipe, batch_size=sizes.throughput_batch)
    rows = {
        f"old loop, batch {recipe.batch_size}": _time_training(legacy_train_model, factory, x, y, recipe, device,
                                                              sizes.throughput_epochs),
        f"new trainer, batch {recipe.batch_size}": _time_training(train_model, factory, x, y, recipe, device,
                                                                 sizes.throughput_epochs),
        f"new trainer, batch {sizes.throughput_big_batch}": _time_training(
            train_model, factory, x, y, replace(recipe, batch_size=sizes.throughput_big_batch), device,
            sizes.throughput_epochs),
    }
    old = next(iter(rows.values()))
    return {"images_per_second": rows, "speedup": {k: v / old for k, v in rows.items()},
            "n": len(y), "epochs_timed": sizes.throughput_epochs, "model": sizes.model,
            "augment": recipe.augment, "image_shape": list(x.shape[1:])}


# --------------------------------------------------------------------------- 2. batched references


def batched_references(x, y, sizes: Sizes, device: str) -> dict:
    x, y = x[: sizes.ref_n], y[: sizes.ref_n]
    k, n = sizes.ref_models, len(y)
    rng = np.random.default_rng(0)
    members = [np.sort(rng.permutation(n)[: n // 2]) for _ in range(k)]
    seeds = list(range(100, 100 + k))
    factory = lambda: build_model(sizes.model, x.shape[1], int(y.max()) + 1)  # noqa: E731
    recipe = sizes.ref_recipe
    # Warm-up of both paths on two models (cuDNN autotuning, vmap tracing).
    train_models_batched(factory, x, y, members[:2], replace(recipe, epochs=1), seeds=seeds[:2], device=device)
    _sync(device)
    started = time.perf_counter()
    for index, seed in zip(members, seeds, strict=True):
        index_t = torch.as_tensor(index)
        train_model(seeded_model(factory, seed), x[index_t], y[index_t], recipe, device=device, seed=seed)
    _sync(device)
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    train_models_batched(factory, x, y, members, recipe, seeds=seeds, device=device)
    _sync(device)
    batched = time.perf_counter() - started
    return {"models": k, "samples_per_model": n // 2, "epochs": recipe.epochs, "model": sizes.model,
            "sequential_seconds": sequential, "batched_seconds": batched, "speedup": sequential / batched}


# --------------------------------------------------------------------------- 3. AMUN protocol


@torch.no_grad()
def evaluate(model, forget: TensorSet, retain: TensorSet, test: TensorSet, device: str) -> dict[str, float]:
    """UA/RA/TA (%) and the loss-threshold forget-vs-test ROC-AUC (%); non-finite outputs flag divergence."""
    out, diverged, losses = {}, False, {}
    for key, subset in (("UA", forget), ("RA", retain), ("TA", test)):
        logits = predict_logits(model, subset.images, device=device)
        diverged |= not bool(torch.isfinite(logits).all())
        out[key] = 100.0 * (logits.argmax(1) == subset.labels).float().mean().item()
        if key != "RA":
            loss = F.cross_entropy(logits.double(), subset.labels, reduction="none").numpy()
            losses[key] = np.nan_to_num(loss, nan=1e30, posinf=1e30)
    out["MIA"] = 100.0 * roc_auc(-losses["UA"], -losses["TA"])  # lower loss = member
    out["diverged"] = float(diverged)
    return out


def amun_table_seed(seed: int, x, y, x_test, y_test, sizes: Sizes, device: str, params, methods) -> dict:
    n, classes = len(y), int(y.max()) + 1
    forget_mask = np.zeros(n, dtype=bool)
    forget_mask[np.random.default_rng(1000 + seed).choice(n, size=round(0.1 * n), replace=False)] = True
    f_idx, r_idx = torch.as_tensor(np.flatnonzero(forget_mask)), torch.as_tensor(np.flatnonzero(~forget_mask))
    forget, retain, test = TensorSet(x[f_idx], y[f_idx]), TensorSet(x[r_idx], y[r_idx]), TensorSet(x_test, y_test)
    factory = lambda: build_model(sizes.model, x.shape[1], classes)  # noqa: E731
    recipe = sizes.recipe
    started = time.perf_counter()
    original = train_model(seeded_model(factory, seed), x, y, recipe, device=device, seed=seed)
    _sync(device)
    original_seconds = time.perf_counter() - started
    data = UnlearningData(forget, retain, classes, recipe, factory)
    started = time.perf_counter()
    retrained = run_method("retrain", original, data, device=device, seed=2000 + seed)
    _sync(device)
    retrain_seconds = time.perf_counter() - started
    rows = {"retrain": {**evaluate(retrained, forget, retain, test, device), "seconds": retrain_seconds},
            "original": {**evaluate(original, forget, retain, test, device), "seconds": original_seconds}}
    for name in methods:
        spec = METHODS.get(name)
        kwargs = {**params.method_kwargs(name), **sizes.method_overrides.get(name, {})}
        if "n_train" in spec.bind({}) and kwargs.get("n_train") is None:
            kwargs["n_train"] = n
        started = time.perf_counter()
        try:
            model = run_method(name, original, data, device=device, seed=seed, kwargs=kwargs)
            _sync(device)
        except Exception as exc:  # a crash is a finding of the check, reported in its row
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        rows[name] = {**evaluate(model, forget, retain, test, device), "seconds": time.perf_counter() - started}
    for row in rows.values():
        if "error" not in row:
            row["gap"] = float(np.mean([abs(row[m] - rows["retrain"][m]) for m in METRICS]))
            row["time_ratio"] = row["seconds"] / retrain_seconds
    return rows


def _interval(values: list[float]) -> dict:
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return {"mean": mean, "std": 0.0, "ci95": [mean, mean], "n": len(arr)}
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return {"mean": mean, "std": float(arr.std(ddof=1)), "ci95": [mean - half, mean + half], "n": len(arr)}


def aggregate(per_seed: list[dict]) -> dict:
    out = {}
    for name in per_seed[0]:
        runs = [r[name] for r in per_seed if "error" not in r[name]]
        errors = sorted({r[name]["error"] for r in per_seed if "error" in r[name]})
        out[name] = {key: _interval([r[key] for r in runs]) for key in (runs[0] if runs else {})}
        if errors:
            out[name]["errors"] = errors
    return out


# --------------------------------------------------------------------------- report


def _fmt(stat: dict | None, digits: int = 1) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(report: dict) -> str:
    meta, lines = report["meta"], []
    lines += [f"# Device check: {meta['device_name']} ({meta['device']}{', quick' if meta['quick'] else ''})", "",
              f"Command: `{meta['command']}`  ", f"torch {meta['torch']}, {meta['platform']}; "
              f"wall time {meta['wall_seconds']:.0f} s.", ""]
    tp = report.get("throughput")
    if tp:
        lines += ["## 1. Trainer throughput", "",
                  f"{tp['model']}, {tp['n']} images of shape {tp['image_shape']}, augmentation {tp['augment']}, "
                  f"{tp['epochs_timed']} timed epoch(s) after one warm-up, seed 0.", "",
                  "| trainer | images/s | vs old |", "|---|---|---|"]
        lines += [f"| {k} | {v:,.0f} | {tp['speedup'][k]:.2f}x |" for k, v in tp["images_per_second"].items()]
        best = max(tp["speedup"].values())
        cpu_note = " (CPU run: not a GPU figure)" if meta["device"] == "cpu" else ""
        lines += ["", f"Target >= 3.5x on a GPU: best {best:.2f}x, {'met' if best >= 3.5 else 'not met'}{cpu_note}.",
                  ""]
    ref = report.get("references")
    if ref:
        lines += ["## 2. Batched reference models", "",
                  f"{ref['models']} x {ref['model']}, {ref['samples_per_model']} samples each, {ref['epochs']} "
                  f"epoch(s): one by one {ref['sequential_seconds']:.1f} s, batched {ref['batched_seconds']:.1f} s, "
                  f"speedup {ref['speedup']:.2f}x (target >= 4x at 16 models on a GPU).", ""]
    table = report.get("amun_table")
    if table:
        m = table["meta"]
        lines += ["## 3. AMUN protocol: Fashion-MNIST, random 10% forget with D_R", "",
                  f"{m['model']}, {m['train']} train / {m['test']} test images {m['image_shape']}, recipe "
                  f"{m['recipe']}, seeds {m['seeds']} (original s, forget draw 1000+s, retrain 2000+s). "
                  "Mean ± std over seeds (95% t-intervals in the JSON); UA/RA/TA/MIA in %, Avg Gap in points "
                  "against the retrain of the same "
                  "seed; time as a ratio to one retrain. MIA: loss-threshold AUC, forget vs test.", ""]
        if m["overrides"]:
            lines += [f"Quick mode shortens these methods' loops (params.yaml otherwise): {m['overrides']}", ""]
        lines += ["| method | UA | RA | TA | MIA | Avg Gap | time / retrain | note |",
                  "|---|---|---|---|---|---|---|---|"]
        results = table["results"]
        order = ["retrain", "original"] + sorted((k for k in results if k not in ("retrain", "original")),
                                                 key=lambda k: results[k].get("gap", {}).get("mean", 1e9))
        for name in order:
            row = results[name]
            note = "; ".join(row.get("errors", []))
            if row.get("diverged", {}).get("mean", 0) > 0:
                note = (note + "; " if note else "") + "non-finite outputs"
            time_cell = (f"{row['time_ratio']['mean']:.2f} ({results['retrain']['seconds']['mean']:.1f} s)"
                         if name == "retrain" else _fmt(row.get("time_ratio"), 2) if name != "original" else "–")
            lines.append(f"| {name} | {_fmt(row.get('UA'))} | {_fmt(row.get('RA'))} | {_fmt(row.get('TA'))} | "
                         f"{_fmt(row.get('MIA'))} | {_fmt(row.get('gap'), 2)} | {time_cell} | {note} |")
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    tp = report.get("throughput")
    if tp:
        names = list(tp["images_per_second"])
        axes[0].barh(names, [tp["images_per_second"][k] for k in names], color=["#999", "#2a7", "#174"])
        axes[0].set_xlabel("images / s")
        axes[0].set_title(f"trainer throughput ({report['meta']['device']})")
    table = report.get("amun_table")
    if table:
        for name, row in table["results"].items():
            if "gap" in row and name != "original":
                axes[1].scatter(row["time_ratio"]["mean"], row["gap"]["mean"])
                axes[1].annotate(name, (row["time_ratio"]["mean"], row["gap"]["mean"]), fontsize=8)
        if "gap" in table["results"].get("original", {}):
            axes[1].axhline(table["results"]["original"]["gap"]["mean"], ls="--", c="grey", label="original")
            axes[1].legend()
        axes[1].set_xscale("symlog", linthresh=0.05)
        axes[1].set_xlabel("time / retrain")
        axes[1].set_ylabel("Avg Gap (points)")
        axes[1].set_title("Fashion-MNIST, random 10% with D_R")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and shortened method loops (smoke run)")
    parser.add_argument("--data-path", default=None, help="Fashion-MNIST idx directory (default: Debian's)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="method kwargs come from here")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the AMUN table (default 2)")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: every registered one)")
    parser.add_argument("--skip", default="", help="parts to skip: throughput,references,table")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="stop starting new AMUN seeds once this much wall time has passed")
    args = parser.parse_args(argv)
    device = args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(f"device_check: {device!r} requested but CUDA is not available; use --device cpu --quick",
              file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.seeds:
        sizes = replace(sizes, seeds=args.seeds)
    skip = set(filter(None, args.skip.split(",")))
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda"
    started = time.perf_counter()
    params = load_params(args.params)
    x, y, x_test, y_test = load_fashion(sizes, args.data_path)
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor() \
        or platform.machine()
    command = "python benchmarks/device_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report: dict = {"meta": {"device": device, "device_name": device_name, "quick": args.quick,
                             "torch": torch.__version__, "platform": platform.platform(), "command": command.strip(),
                             "cpu_threads": torch.get_num_threads()}, "notes": []}
    if "throughput" not in skip:
        report["throughput"] = trainer_throughput(x, y, sizes, device)
        print("throughput:", json.dumps(report["throughput"]["images_per_second"]), flush=True)
    if "references" not in skip:
        report["references"] = batched_references(x, y, sizes, device)
        print(f"references: speedup {report['references']['speedup']:.2f}x", flush=True)
    if "table" not in skip:
        methods = (args.methods.split(",") if args.methods
                   else [m for m in METHODS.names() if m != "retrain"])
        per_seed = []
        for seed in range(sizes.seeds):
            if seed >= 2 and time.perf_counter() - started > args.budget_s:
                report["notes"].append(f"stopped after {seed} seeds: time budget {args.budget_s:.0f} s spent")
                break
            per_seed.append(amun_table_seed(seed, x, y, x_test, y_test, sizes, device, params, methods))
            print(f"AMUN table seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
        report["amun_table"] = {
            "meta": {"model": sizes.model, "train": len(y), "test": len(y_test), "image_shape": list(x.shape[1:]),
                     "recipe": asdict(sizes.recipe), "seeds": list(range(len(per_seed))),
                     "overrides": sizes.method_overrides},
            "results": aggregate(per_seed), "per_seed": per_seed}
    report["meta"]["wall_seconds"] = time.perf_counter() - started
    if torch.device(device).type != "cuda":
        report["notes"].append("CPU run: the GPU figures (trainer >= 3.5x, batched >= 4x) are not measured here.")
    if args.quick:
        report["notes"].append("Quick mode is a smoke run of the code paths (tiny subset, 14x14 images, shortened "
                               "method loops): its accuracies and gaps do not rank methods.")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"device_check_{torch.device(device).type}{'_quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
