"""Device check: what the core does on one accelerator, in one command, within about 8 minutes.

Three parts, each written to ``benchmarks/results/device_check_<device>[_quick].{md,json,png}``:

1. Trainer throughput: ``train_model`` as landed before the GPU work (``benchmarks/legacy_trainer.py``:
   per-step host copies, fp32, a host sync every step) against today's ``unlearn.training.train_model``
   (data resident on the device, bf16 autocast and channels_last on CUDA, no per-step sync), same model,
   data, recipe and seed; the new trainer also at a larger batch. Images per second over timed epochs
   after one warm-up epoch (lazy kernel loading, allocator; cuDNN autotuning is off, PyTorch's default and the
   pipeline's), with the device synchronised around each timing.
2. Reference models: ``unlearn.batched.train_models_batched`` (one vmapped model) against K models
   trained one by one with ``train_model``, K = 16, each on a random half of the data.
3. The AMUN protocol on real Fashion-MNIST: random 10% forget with D_R, every registered method with
   params.yaml's profile for ``fashion_mnist/<model>`` (``unlearn.profiles``; the shipped
   params.yaml's active setting is digits/small_cnn, which is not this one). The protocol is
   ``benchmarks/methods.py``'s, run through its own functions so the GPU and CPU tables are the same
   measurement: per repetition i the original is trained with seed 100+i, the forget subset drawn
   with seed 200+i and each method run with seed 300+i; the target is the mean of ``retrains``
   retrains; MIA is offline RMIA (and LiRA) with reference models on halves of D_R; cells are means
   with 95% t half-widths; Δw flags a method that returned its input unchanged. A method that raises
   is reported with its error, not dropped. The report is rewritten after every part, every repetition
   and every method of the first repetition (marked partial), so a run stopped by a time limit still
   leaves what it finished (nothing of the table while the first repetition's models still train).

Only torch, numpy, scipy, scikit-learn, matplotlib and pyyaml are needed: the script imports the
pure core (``unlearn``) and never the orchestration stack (``tests/core/test_device_check.py`` runs it
with prefect, mlflow, dvc and great_expectations blocked).

Usage (on the lent GPU machine, whose interpreter is ``python3``; ``sh benchmarks/device_run.sh "$OUT"`` runs
the hyperparameter sweep first and then this with what it selected):
    python3 benchmarks/device_check.py                       # CUDA, full size (about 5-8 min on one GPU)
    python benchmarks/device_check.py --device cpu --quick   # tiny CPU version (1-2 min), what the test runs

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (``scripts/install-datasets.sh``) or
``--data-path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `unlearn` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

if str(REPO / "benchmarks") not in sys.path:  # benchmarks/methods.py imports its sibling `protocol`
    sys.path.insert(0, str(REPO / "benchmarks"))

import methods as table_bench  # noqa: E402  (benchmarks/methods.py: the methods table's protocol)
from protocol import pad_to_rgb32, wait_for  # noqa: E402

from benchmarks.legacy_trainer import legacy_train_model  # noqa: E402
from unlearn import accel  # noqa: E402
from unlearn.batched import train_models_batched, vmapped_forward_dtype  # noqa: E402
from unlearn.config import DataConfig, load_params  # noqa: E402
from unlearn.data.sources import load_source  # noqa: E402
from unlearn.methods import METHODS, TensorSet  # noqa: E402
from unlearn.models import build_model  # noqa: E402
from unlearn.training import SGDRecipe, seeded_model, to_float, train_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


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
    retrains: int  # the AMUN table's target: the mean of this many retrains
    references: int  # reference models of the table's RMIA / LiRA (complementary halves of D_R)
    lcodec_requests: int  # L-CODEC's certified mode timed on this many one-sample requests (0: not run)
    method_overrides: dict  # method -> kwargs replacing params.yaml's (quick mode only: shorter loops)
    table_epochs: tuple[int, int] | None = None  # (fewest, most) recipe epochs sized from part 1 (None: fixed)


# The GPU measurement used 15 epochs (retrain test accuracy 90.5%). The table's recipe is sized from the
# throughput part 1 measures (table_recipe_epochs): 20 epochs with the cosine schedule is the longest recipe whose
# 2-repetition table fits the 8-minute budget if the new trainer were no faster than the old; a faster trainer buys
# a longer, less shortened recipe (up to 100 epochs), which is also what AMUN's cost is measured against: its
# 10 fine-tuning epochs over D_R are half of a 20-epoch retrain, about a tenth of a 100-epoch one (the paper's
# retrains run 200 epochs).
FULL = Sizes(model="resnet18", train=10_000, test=2_000, pad_rgb=True, downsample=1,
             recipe=SGDRecipe(20, 128, 0.1, augment=True), seeds=2,
             throughput_n=10_000, throughput_batch=128, throughput_big_batch=512, throughput_epochs=2,
             ref_models=16, ref_n=4_000, ref_recipe=SGDRecipe(2, 128, 0.1, augment=True),
             retrains=3, references=4, lcodec_requests=5, method_overrides={}, table_epochs=(20, 100))
QUICK = Sizes(model="small_cnn", train=200, test=100, pad_rgb=False, downsample=2,
              recipe=SGDRecipe(4, 16, 0.05), seeds=2,
              throughput_n=192, throughput_batch=32, throughput_big_batch=96, throughput_epochs=1,
              ref_models=4, ref_n=96, ref_recipe=SGDRecipe(1, 16, 0.05),
              retrains=2, references=2, lcodec_requests=0,
              method_overrides={
                  "amun": {"pgd_steps": 5, "epochs": 1}, "amun_salun": {"pgd_steps": 5, "epochs": 1},
                  "covarnav": {"n_inverted": 8, "inversion_steps": 5, "epochs": 1},
                  "lcodec": {"n_perturbations": 10, "max_slices": 2, "max_params": 200},
                  "scrub": {"epochs": 1, "msteps": 1}, "neggrad_plus": {"epochs": 1},
                  "random_label": {"epochs": 1}, "salun": {"epochs": 1}, "l1_sparse": {"epochs": 1},
                  "boundary_shrink": {"epochs": 1}, "grad_ascent": {"epochs": 1}, "finetune": {"epochs": 1},
                  "dlfd": {"check_every": 1},
              })


# Share of a repetition's time the table's model trainings (original, retrains, references) may take; the
# methods (about 160 epoch-equivalents of the training set at the papers' settings, many with small batches
# that gain less from a fast trainer) and the attacks take the rest.
MODEL_SHARE = 0.5


def table_recipe_epochs(sizes: Sizes, images_per_second: float | None, seconds_left: float) -> tuple[int, str]:
    """Epochs of the table's recipe: the longest whose model trainings fit ``MODEL_SHARE`` of each repetition.

    Args:
        sizes: The run's sizes (``table_epochs`` bounds the answer).
        images_per_second: The new trainer's throughput from part 1 at the table's batch size (None when
            part 1 did not run: the fewest epochs).
        seconds_left: Budget left for the table.

    Returns:
        (epochs, a sentence saying how they were chosen, for the report).
    """
    if sizes.table_epochs is None:
        return sizes.recipe.epochs, f"The table's recipe has {sizes.recipe.epochs} epochs (fixed for these sizes)."
    lo, hi = sizes.table_epochs
    usable = (images_per_second is not None and math.isfinite(images_per_second) and images_per_second > 0
              and math.isfinite(seconds_left) and seconds_left > 0 and sizes.seeds > 0)
    if not usable:
        return lo, f"The table's recipe has {lo} epochs (no throughput measured in part 1 to size it)."
    # Full-size trainings per repetition: the original, the retrains (on D_R, ~90%) and the references (on halves).
    trainings = 1 + sizes.retrains + sizes.references / 2
    per_repetition = seconds_left / sizes.seeds
    fit = int(MODEL_SHARE * per_repetition * images_per_second / (trainings * sizes.train))
    epochs = max(lo, min(hi, fit))
    return epochs, (f"The table's recipe has {epochs} epochs: the longest (within {lo}-{hi}) whose {trainings:g} "
                    f"full-size trainings per repetition fit {MODEL_SHARE:.0%} of the {per_repetition:.0f} s each of "
                    f"{sizes.seeds} repetitions had left, at part 1's {images_per_second:,.0f} images/s.")


def repetition_fits(i: int, elapsed: float, first: dict | None, budget_s: float) -> bool:
    """Whether the table starts repetition ``i``: the first always; a later one when its models and its first
    method would end within the budget at the first repetition's pace (``first``: its ``prepare_seconds`` and
    rows). Its methods then run until the budget, each row joining the table as it finishes.

    Why not "only if the whole repetition fits": by the estimates for an H100 the first repetition takes most of
    the budget, so a second never started and the table had one seed, no interval and no paired section, where
    the issue asks for >= 2 (review of 2026-12-07). A later repetition's finished rows give those methods two.
    """
    if i == 0:
        return True
    if first is None:
        return False
    # a method's time with its evaluation (wall_seconds; seconds, the method alone, in older reports)
    seconds = [row.get("wall_seconds", row.get("seconds")) for row in first["rows"].values()
               if isinstance(row.get("wall_seconds", row.get("seconds")), float | int)]
    return elapsed + float(first.get("prepare_seconds") or 0.0) + (seconds[0] if seconds else 0.0) <= budget_s


def load_fashion(sizes: Sizes, data_path: str | None, seed: int = 0):
    """Seeded Fashion-MNIST subsets as float tensors (train x, y, test x, y)."""
    cfg = DataConfig(source="fashion_mnist", source_path=data_path, train_subset=sizes.train,
                     test_subset=sizes.test, split_seed=seed)
    source = load_source(cfg)
    images = to_float(source.images)  # (N, 1, 28, 28)
    if sizes.downsample > 1:
        images = F.avg_pool2d(images, sizes.downsample)
    if sizes.pad_rgb:
        images = pad_to_rgb32(images)  # (N, 3, 32, 32)
    labels = torch.as_tensor(source.labels)
    train = torch.as_tensor(source.splits == "train")
    return images[train], labels[train], images[~train], labels[~train]


# --------------------------------------------------------------------------- 1. trainer throughput


def _time_training(trainer, factory, x, y, recipe, device, epochs) -> float:
    """Images per second of ``trainer`` over ``epochs`` timed epochs (one warm-up epoch first)."""
    model = seeded_model(factory, 0)
    trainer(model, x, y, replace(recipe, epochs=1), device=device, seed=0)  # warm-up
    model = seeded_model(factory, 0)
    wait_for(device)
    started = time.perf_counter()
    trainer(model, x, y, replace(recipe, epochs=epochs), device=device, seed=0)
    wait_for(device)
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
    row = {"images_per_second": rows, "speedup": {k: v / old for k, v in rows.items()},
           "n": len(y), "epochs_timed": sizes.throughput_epochs, "model": sizes.model,
           "augment": recipe.augment, "image_shape": list(x.shape[1:])}
    if torch.device(device).type == "cuda":  # the trainer's own decision (it falls back silently when a probe fails)
        row["channels_last"] = accel.use_channels_last(device, x[:2], factory().to(device))
    return row


# --------------------------------------------------------------------------- 2. batched references


def batched_references(x, y, sizes: Sizes, device: str) -> dict:
    x, y = x[: sizes.ref_n], y[: sizes.ref_n]
    k, n = sizes.ref_models, len(y)
    rng = np.random.default_rng(0)
    members = [np.sort(rng.permutation(n)[: n // 2]) for _ in range(k)]
    seeds = list(range(100, 100 + k))
    factory = lambda: build_model(sizes.model, x.shape[1], int(y.max()) + 1)  # noqa: E731
    recipe = sizes.ref_recipe
    # Warm-up of every timed path (CUDA loads kernels lazily at their first use; cuDNN autotuning is off, so
    # batch shapes need no tuning): the batched model, and one model one by one in bf16 and in float32.
    train_models_batched(factory, x, y, members[:2], replace(recipe, epochs=1), seeds=seeds[:2], device=device)
    first = torch.as_tensor(members[0])
    for mixed_precision in (True, False):
        train_model(seeded_model(factory, seeds[0]), x[first], y[first], replace(recipe, epochs=1), device=device,
                    seed=seeds[0], mixed_precision=mixed_precision)

    def one_by_one(mixed_precision: bool) -> float:
        wait_for(device)
        started = time.perf_counter()
        for index, seed in zip(members, seeds, strict=True):
            index_t = torch.as_tensor(index)
            train_model(seeded_model(factory, seed), x[index_t], y[index_t], recipe, device=device, seed=seed,
                        mixed_precision=mixed_precision)
        wait_for(device)
        return time.perf_counter() - started

    sequential = one_by_one(True)
    # The batched model trains in float32 (unlearn/batched.py, "Precision"), so the like-for-like
    # baseline is train_model in float32 as well.
    sequential_fp32 = one_by_one(False)

    def batched_run(mixed_precision: bool) -> float:
        wait_for(device)
        started = time.perf_counter()
        train_models_batched(factory, x, y, members, recipe, seeds=seeds, device=device,
                             mixed_precision=mixed_precision)
        wait_for(device)
        return time.perf_counter() - started

    batched = batched_run(False)
    row = {"models": k, "samples_per_model": n // 2, "epochs": recipe.epochs, "model": sizes.model,
           "sequential_seconds": sequential, "sequential_fp32_seconds": sequential_fp32,
           "batched_seconds": batched, "speedup": sequential / batched,
           "speedup_vs_fp32": sequential_fp32 / batched}
    # Does autocast reach the operations inside vmap here? If so, time the batched model under it too (off by
    # default in unlearn/batched.py until this says it applies and pays). A failure is recorded, not raised.
    if torch.device(device).type != "cuda":
        return row  # train_model uses no autocast off CUDA: nothing to probe
    try:
        row["vmapped_autocast_dtype"] = str(vmapped_forward_dtype(factory, x, device)).replace("torch.", "")
        if row["vmapped_autocast_dtype"] == "bfloat16":
            train_models_batched(factory, x, y, members[:2], replace(recipe, epochs=1), seeds=seeds[:2],
                                 device=device, mixed_precision=True)  # warm-up of the bf16 kernels
            row["batched_bf16_seconds"] = batched_run(True)
            row["speedup_bf16"] = sequential / row["batched_bf16_seconds"]
    except Exception as exc:  # noqa: BLE001 - the fp32 figures above stand on their own
        row["batched_bf16_error"] = table_bench.error_text(exc)
    return row


# --------------------------------------------------------------------------- 3. AMUN protocol


def table_args(sizes: Sizes, device: str, methods: list[str], params_file: str | None = None) -> SimpleNamespace:
    """What ``benchmarks/methods.py``'s repetition reads from its command line, for this check."""
    return SimpleNamespace(model=sizes.model, device=device, dataset="fashion_mnist", fraction=0.1,
                           retrains=sizes.retrains, references=sizes.references, methods=",".join(methods),
                           lcodec_requests=sizes.lcodec_requests if "lcodec" in methods else 0,
                           overrides=sizes.method_overrides, catch_errors=True, params_file=params_file)


def amun_table(reps: list[dict], sizes: Sizes, args: SimpleNamespace, params, shape: list[int],
               wall_seconds: float, device_name: str, partial: str | None = None, running: str | None = None) -> dict:
    """The table of the repetitions done so far, as ``benchmarks/methods.py`` aggregates and writes it.

    ``partial`` says how much of the only repetition is done while it still runs (None once one is whole);
    ``running`` how much of a later repetition, whose finished rows are in the table.
    """
    key = params.unlearn.profile_key(args.dataset, args.model)
    meta = {"command": "(benchmarks/device_check.py, part 3)", "dataset": args.dataset, "model": args.model,
            "device": args.device, "seeds": len(reps), "retrains": args.retrains, "references": args.references,
            "fraction": args.fraction, "profile": key if key in params.unlearn.profiles else "(none: defaults)",
            "recipe": asdict(sizes.recipe), "sizes": reps[0]["sizes"], "image_shape": shape,
            "overrides": sizes.method_overrides, "wall_seconds": wall_seconds,
            "recalibrate_bn": params.unlearn.recalibrate_bn,  # what methods.run_repetition ran with
            "machine": f"{device_name} (this check's parts 1-3 together)",
            "provenance": params_provenance(args.params_file, key, args.methods.split(",")),
            "kwargs": {name: {**params.unlearn.kwargs_for(name, args.dataset, args.model),
                              **sizes.method_overrides.get(name, {})} for name in args.methods.split(",")},
            "partial": partial, "running": running}
    return {"meta": meta, "results": table_bench.aggregate(reps), "repetitions": reps}


def params_provenance(params_file: str | None, key: str, methods: list[str] | None = None) -> str | None:
    """How the table's profile was chosen when ``--params`` names another file than the committed params.yaml.

    Only a sweep log that vouches for this very file counts: ``benchmarks/select_hparams.py
    --write-params`` records the SHA-256 of the file it wrote in its log (``hparams_*.json``), and the
    log must sit next to the file. Then the table's methods it selected values for (on a validation
    split of the training data) are named, and those that kept the profile's values. Without such a
    log nothing is claimed about how the values were chosen. None for the committed params.yaml
    (``benchmarks/methods.py`` then reads the committed sweep logs).
    """
    if params_file is None or Path(params_file).resolve() == (REPO / "params.yaml").resolve():
        return None
    path = Path(params_file)
    text = f"from {path.name} (--params), not the committed params.yaml"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    for log in sorted(path.parent.glob("hparams_*.json")):
        try:
            saved = json.loads(log.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (saved.get("meta", {}).get("params_written") or {}).get("sha256") != digest or digest is None:
            continue
        table = set(methods) if methods else set(METHODS.names()) - {"retrain"}
        chosen = sorted(set(saved.get("chosen") or {}) & table)
        kept = sorted(table - set(chosen))
        return (f"{text}; selected for {', '.join(chosen) or 'no method'} on a validation split of the training "
                f"data by benchmarks/select_hparams.py (log {log.with_suffix('.md').name}, which records this "
                "file's SHA-256)" + (f"; {', '.join(kept)} kept the profile's values" if kept else "")
                + "; the test split was not used to choose anything")
    return f"{text}; no sweep log next to it vouches for it, so how its values were chosen is not recorded here"


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    meta, lines = report["meta"], []
    lines += [f"# Device check: {meta['device_name']} ({meta['device']}{', quick' if meta['quick'] else ''})", "",
              f"Command: `{meta['command']}`  ", f"torch {meta['torch']}, {meta['platform']}; "
              f"wall time {meta['wall_seconds']:.0f} s.", ""]
    if not meta.get("complete"):  # written while the check ran: a run stopped there (a time limit, a kill) stays so
        lines += ["**Incomplete: written while the check was still running; the check did not finish after this "
                  "(see the notes for what had been reached).**", ""]
    tp = report.get("throughput")
    if tp:
        lines += ["## 1. Trainer throughput", "",
                  f"{tp['model']}, {tp['n']} images of shape {tp['image_shape']}, augmentation {tp['augment']}, "
                  f"{tp['epochs_timed']} timed epoch(s) after one warm-up, seed 0.", "",
                  "| trainer | images/s | vs old |", "|---|---|---|"]
        lines += [f"| {k} | {v:,.0f} | {tp['speedup'][k]:.2f}x |" for k, v in tp["images_per_second"].items()]
        cpu_note = " (CPU run: not a GPU figure)" if meta["device"] == "cpu" else ""
        names = list(tp["speedup"]) + [None, None]  # old, same batch, larger batch (padded: never an IndexError)
        same, big = (tp["speedup"].get(names[1], float("nan")), tp["speedup"].get(names[2], float("nan")))
        verdict = ("met like for like" if same >= 3.5 else
                   "met only at the larger batch (the issue's 4.3x plain loop was measured that way)" if big >= 3.5
                   else "not met")
        lines += ["", f"Target >= 3.5x on a GPU: {same:.2f}x at the same batch ({names[1]}), {big:.2f}x with "
                      f"{names[2]}: {verdict}{cpu_note}."]
        if "channels_last" in tp:
            lines += [f"channels_last used by the new trainer for this model: {tp['channels_last']}."]
        lines += [""]
    ref = report.get("references")
    if ref:
        lines += ["## 2. Batched reference models", "",
                  f"{ref['models']} x {ref['model']}, {ref['samples_per_model']} samples each, {ref['epochs']} "
                  f"epoch(s): one by one with today's train_model {ref['sequential_seconds']:.1f} s (bf16 autocast and "
                  f"channels_last on CUDA), one by one in float32 {ref['sequential_fp32_seconds']:.1f} s, batched "
                  f"{ref['batched_seconds']:.1f} s: speedup {ref['speedup']:.2f}x over today's trainer, "
                  f"{ref['speedup_vs_fp32']:.2f}x over float32 one by one (target >= 4x at 16 models on a GPU). "
                  "The batched model trains in float32 (unlearn/batched.py, \"Precision\"), so the first figure "
                  "compares it with a faster recipe and the second is like for like."]
        dtype = ref.get("vmapped_autocast_dtype")
        if dtype == "bfloat16" and "batched_bf16_seconds" in ref:
            lines += [f"Under train_model's autocast a vmapped forward computes in bfloat16 here (autocast reaches "
                      "operations inside vmap): batched with mixed_precision=True "
                      f"{ref['batched_bf16_seconds']:.1f} s, {ref['speedup_bf16']:.2f}x over today's trainer."]
        elif dtype == "bfloat16":
            lines += ["Under train_model's autocast a vmapped forward computes in bfloat16 here (autocast reaches "
                      "operations inside vmap), but batched training with mixed_precision=True failed: "
                      f"{ref.get('batched_bf16_error', '(no timing recorded)')}"]
        elif dtype is not None:
            lines += [f"Under train_model's autocast a vmapped forward computes in {dtype} here: autocast does not "
                      "reach operations inside vmap, so mixed_precision=True would change nothing."]
        elif "batched_bf16_error" in ref:
            lines += [f"The probe of autocast inside vmap failed: {ref['batched_bf16_error']}"]
        lines += [""]
    table = report.get("amun_table")
    if table:
        m = table["meta"]
        body = table_bench.markdown(table["results"], table["repetitions"], m).splitlines()
        lines += [f"## 3. AMUN protocol: Fashion-MNIST, random 10% forget with D_R ({m['model']}, images "
                  f"{m['image_shape']})", ""]
        if m.get("partial"):
            lines += [f"**Partial: only repetition 0's first rows had finished ({m['partial']}) "
                      "when this was written: a run stopped there (by a time limit, or an error in the notes) "
                      "leaves these rows, one repetition, no interval.**", ""]
        if m.get("running"):
            lines += [f"**Still running when this was written ({m['running']}): its finished rows are in the "
                      "table; the other methods have one repetition fewer (a run stopped there leaves this).**", ""]
        if m["overrides"]:
            lines += [f"Quick mode shortens these methods' loops (params.yaml otherwise): {m['overrides']}", ""]
        for line in body[1:]:
            if line.startswith("Command: ") or (not line and (not lines or not lines[-1])):
                continue  # the check's own command heads the report; no double blank lines
            lines.append("#" + line if line.startswith("## ") else line)
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
            if name not in table_bench.REFERENCE_ROWS and np.isfinite(row["gap"]["mean"]):
                axes[1].scatter(row["time_ratio"]["mean"], row["gap"]["mean"])
                axes[1].annotate(name, (row["time_ratio"]["mean"], row["gap"]["mean"]), fontsize=8)
        if "original" in table["results"]:
            axes[1].axhline(table["results"]["original"]["gap"]["mean"], ls="--", c="grey", label="original")
            axes[1].legend()
        axes[1].set_xscale("symlog", linthresh=0.05)
        axes[1].set_xlabel("time / retrain")
        axes[1].set_ylabel("Avg Gap to the retrain mean (points)")
        axes[1].set_title("Fashion-MNIST, random 10% with D_R")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
                        help="stop starting new AMUN seeds once this much wall time has passed; the table's "
                             "recipe is sized to fit it")
    parser.add_argument("--table-epochs", type=_positive_int, default=None,
                        help="epochs of the table's recipe (default: sized from part 1's throughput)")
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
    # cuDNN autotuning stays off (PyTorch's default, what the pipeline's trainer runs with): on, every new batch
    # shape (the methods' batch sizes, last batches, L-CODEC's single samples) would be tuned inside a timed window.
    torch.backends.cudnn.benchmark = False
    started = time.perf_counter()
    print(f"device_check: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"device {device}", flush=True)
    fallback = None
    if not Path(args.params).is_file():  # the sweep before it wrote no copy: its log says why
        fallback = f"--params {args.params} does not exist: the table uses {REPO / 'params.yaml'}'s profile"
        args.params = str(REPO / "params.yaml")
    params = load_params(args.params)
    x, y, x_test, y_test = load_fashion(sizes, args.data_path)
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor() \
        or platform.machine()
    command = "python benchmarks/device_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report: dict = {"meta": {"device": device, "device_name": device_name, "quick": args.quick,
                             "torch": torch.__version__, "platform": platform.platform(), "command": command.strip(),
                             "cpu_threads": torch.get_num_threads()}, "notes": []}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"device_check_{torch.device(device).type}{'_quick' if args.quick else ''}"
    if torch.device(device).type != "cuda":
        report["notes"].append("CPU run: the GPU figures (trainer >= 3.5x, batched >= 4x) are not measured here.")
    if fallback:
        report["notes"].append(fallback)
    if torch.device(device).type == "cuda":
        report["notes"].append(
            "Float32 here means PyTorch's defaults: convolutions in TF32 where the GPU has it (cudnn.allow_tf32 "
            f"{torch.backends.cudnn.allow_tf32}), matmuls in float32 (cuda.matmul.allow_tf32 "
            f"{torch.backends.cuda.matmul.allow_tf32}); cuDNN autotuning off.")
    if args.quick:
        report["notes"].append("Quick mode is a smoke run of the code paths (tiny subset, 14x14 images, shortened "
                               "method loops): its accuracies and gaps do not rank methods.")

    def write(final: bool = False) -> None:
        """Rewrite the report with what is done so far (a run killed by a time limit keeps it).

        Each file is written next to its target and renamed over it, so a kill mid-write leaves the
        previous version; the JSON holds null where a statistic is undefined (strict JSON has no NaN).
        """
        report["meta"]["wall_seconds"] = time.perf_counter() - started
        report["meta"]["complete"] = final
        texts = {".json": json.dumps(_strict(report), indent=2, default=float, allow_nan=False),
                 ".md": markdown(report)}
        for suffix, text in texts.items():
            tmp = stem.with_suffix(suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(stem.with_suffix(suffix))
        tmp = stem.with_name(stem.name + ".tmp.png")
        try:
            plot(report, tmp)
            tmp.replace(stem.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 - the JSON and markdown are written; a plot is not worth the run
            print(f"device_check: plot failed: {exc!r}", file=sys.stderr, flush=True)
            tmp.unlink(missing_ok=True)

    def attempt(part: str, run) -> None:
        """Run one part; a crash is recorded in the report (and the next part still runs)."""
        try:
            run()
        except Exception as exc:  # the one GPU run must keep every part that can run
            report["notes"].append(f"part {part} raised {table_bench.error_text(exc)}")
            print(f"device_check: part {part} raised:", repr(exc), file=sys.stderr, flush=True)
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - a report that cannot be rendered must not stop the next part
            print(f"device_check: writing the report after part {part} failed: {exc!r}", file=sys.stderr, flush=True)

    def throughput() -> None:
        report["throughput"] = trainer_throughput(x, y, sizes, device)
        print("throughput:", json.dumps(report["throughput"]["images_per_second"]), flush=True)

    def references() -> None:
        report["references"] = batched_references(x, y, sizes, device)
        print(f"references: speedup {report['references']['speedup']:.2f}x", flush=True)

    def table() -> None:
        methods = (args.methods.split(",") if args.methods
                   else [m for m in METHODS.names() if m != "retrain"])
        bench_args = table_args(sizes, device, methods, args.params)
        data = (x, y, TensorSet(x_test, y_test))
        if args.table_epochs is not None:
            epochs, why = args.table_epochs, f"The table's recipe has {args.table_epochs} epochs (--table-epochs)."
        else:
            measured = report.get("throughput", {}).get("images_per_second", {})
            epochs, why = table_recipe_epochs(sizes, measured.get(f"new trainer, batch {sizes.throughput_batch}"),
                                              args.budget_s - (time.perf_counter() - started))
        table_sizes = replace(sizes, recipe=replace(sizes.recipe, epochs=epochs))
        report["notes"].append(why)
        print(why, flush=True)
        reps: list[dict] = []
        for i in range(sizes.seeds):
            elapsed = time.perf_counter() - started
            if not repetition_fits(i, elapsed, reps[0] if reps else None, args.budget_s):
                report["notes"].append(
                    f"stopped after {i} of {sizes.seeds} repetition(s): another one's models and first method would "
                    f"end past the time budget ({elapsed:.0f} s used of {args.budget_s:.0f} s)"
                    + ("; the issue asks for >= 2 seeds, so this table falls short of that" if i < 2 else ""))
                break

            def partial(rep: dict, i: int = i) -> None:
                """Each finished row joins the table at once (a time limit that kills the run mid-repetition then
                leaves it): while the first repetition runs, its rows alone, marked partial; while a later one
                runs, the earlier repetitions with its finished rows (those methods then have one seed more)."""
                planned = [m for m in dict.fromkeys(methods) if m != "retrain"]
                done = sum(m in rep["rows"] for m in planned)
                pending = ("; L-CODEC's certified timing not yet run" if i == 0 and "lcodec" in planned
                           and bench_args.lcodec_requests > 0 else "")
                try:
                    report["amun_table"] = amun_table(
                        [*reps, rep], table_sizes, bench_args, params, list(x.shape[1:]),
                        time.perf_counter() - started, device_name,
                        partial=f"{done} of {len(planned)} methods done{pending}" if i == 0 else None,
                        running=f"repetition {i}: {done} of {len(planned)} methods done so far" if i else None)
                    write()
                except Exception as exc:  # noqa: BLE001 - progress is a convenience; the run goes on
                    print(f"device_check: writing the partial table failed: {exc!r}", file=sys.stderr, flush=True)

            # The first repetition runs every method (each must run on CUDA once); a later one stops starting
            # methods at the budget, and its finished rows count.
            deadline = None if i == 0 else started + args.budget_s
            if i > 0:  # a stop while its models train must not leave a report that looks finished
                report["amun_table"] = amun_table(reps, table_sizes, bench_args, params, list(x.shape[1:]),
                                                  time.perf_counter() - started, device_name,
                                                  running=f"repetition {i}: training its models")
                write()
            rep = table_bench.run_repetition(i, data, bench_args, params, table_sizes.recipe, progress=partial,
                                             deadline=deadline)
            ran = [m for m in rep["rows"] if m not in table_bench.REFERENCE_ROWS]
            if i > 0 and not ran:
                report["notes"].append(f"repetition {i} trained its models, but no method started before the time "
                                       "budget: left out of the table (its models were trained for nothing)")
                report["amun_table"] = amun_table(reps, table_sizes, bench_args, params, list(x.shape[1:]),
                                                  time.perf_counter() - started, device_name)
                break
            reps.append(rep)
            if rep["extra"].get("stopped"):
                report["notes"].append(f"repetition {i}: {rep['extra']['stopped']}; the methods after them "
                                       f"have {i} seed(s)")
            print(f"AMUN table repetition {i} done ({time.perf_counter() - started:.0f} s)", flush=True)
            report["amun_table"] = amun_table(reps, table_sizes, bench_args, params, list(x.shape[1:]),
                                              time.perf_counter() - started, device_name)
            write()

    for part, run in (("throughput", throughput), ("references", references), ("table", table)):
        if part not in skip:
            attempt(part, run)
    write(final=True)
    print(markdown(report))
    return 0


def _strict(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
