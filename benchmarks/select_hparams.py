"""Select every method's hyperparameters for one setting on a validation split carved from the
TRAINING data (the test split is never read), and log the whole sweep.

Every method is tuned the same way (issue #13: AMUN had been run at its README's one-epoch
schedule while the baselines were sized separately):

1. The training split is divided, with ``--split-seed``, into a tuning-train part and a
   validation part (``--val-fraction``); the validation part plays the role of the test set.
   ``--tuning-size N`` sizes the subset so that the tuning-train part has N samples: give it the
   training-set size of the setting the values are for, since every method's number of steps, and
   so how far it moves, grows with |D_R| (:func:`pool_for_tuning_size`).
2. On the tuning-train part: an original model, a random forget subset (its own seed),
   ``--retrains`` retrains on D_R (their mean is the target) and ``--references`` reference
   models on complementary halves of D_R for the offline RMIA / LiRA attacks (benchmarks/protocol.py).
3. Each method runs every point of its grid (defined below; each point overrides the setting's
   current profile, ``params.yaml``) with one run seed. A point is admissible when the model
   moved (relative weight change > 0) and kept at least half the original's validation
   accuracy; the admissible point with the smallest Avg Gap (UA, RA, validation accuracy and
   RMIA AUC against the retrain mean) is selected. AMUN+SalUn's grid is built on AMUN's
   selected point, since its profile entry extends AMUN's.
4. The log (every point, its metrics and the selection) goes to
   ``benchmarks/results/hparams_<dataset>_<model>.{md,json}``, with a YAML block of the selected
   values to copy into the setting's profile in params.yaml.

Usage (digits, CPU, about 25 minutes on 2 busy cores):
    nice -n 10 python benchmarks/select_hparams.py --dataset digits --model small_cnn

First selection in a new setting on a GPU (``--grid-preset wide``: about three points per method, the
methods issue #13 found unchanged or destroyed first), bounded in time, then the device check's table
with what it selected: ``sh benchmarks/device_run.sh "$OUT"`` on a lent GPU machine, after ``make
device-prep`` (README "Benchmarks"; the script holds the two commands and keeps the clock: 450 s in all).
``--budget-s`` bounds when points start, not the run: its preparation counts against it, a method's point
starts only if the budget is unspent and the method's previous point, taking as long again, would end
within it, and a point started runs to its end (a method's first point is not estimated). A method whose
grid it cuts is not selected (the best of part of a grid is no selection) and methods it never reaches keep
their profile values; the log says which.
The log is rewritten after every method, so a run cut short keeps what it finished. ``--write-params``
changes only the selected methods' kwargs in the copy (a method inheriting from a selected one, as
amun_salun from amun, is pinned to every argument it had), and the log records the copy's SHA-256, which is
how device_check.py knows which log vouches for the file it was given.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # run as a script without an install (a lent GPU machine)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from protocol import (  # noqa: E402
    METRICS,
    evaluate,
    gap,
    load_data,
    prepare,
    recalibrate_bn,
    run_one,
    subset,
    untouched,
    validation_mask,
)

from unlearn.config import Params, load_params  # noqa: E402
from unlearn.methods import METHODS  # noqa: E402
from unlearn.training import SGDRecipe, predict_logits  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

# Points per method: each is a dict of overrides on the setting's profile. Two points on purpose
# (a CPU sweep on 2 shared cores); {} is the profile as it stood before the sweep.
GRIDS: dict[str, list[dict]] = {
    "finetune": [{}, {"lr": 0.03}],
    "amun": [{}, {"epochs": 10, "lr_step": 40, "lr": 0.01}],
    "amun_salun": [{"mask_ratio": 0.5}],
    "grad_ascent": [{"lr": 1e-3}, {}],
    "neggrad_plus": [{}, {"alpha": 0.95}],
    "random_label": [{}, {"lr": 1e-3}],
    "boundary_shrink": [{"lr": 1e-4}, {}],
    "l1_sparse": [{}, {"gamma": 2e-3}],
    "salun": [{}, {"lr": 1e-3}],
    "scrub": [{}, {"lr": 1e-3}],
    "ssd": [{"selection_weighting": 5.0}, {}],
    "dlfd": [{}, {"epsilon": 0.0314}],
    # One point by default (FOCI per request, and CovarNav's inversion, are the costliest points of a CPU
    # sweep); the Fashion-MNIST small-CNN sweep gave both an explicit 3-point grid (--grid).
    "lcodec": [{}],
    "covarnav": [{}],
}


# First selection in a setting whose profile holds the papers' values (--grid-preset wide): each method's
# main knob over about a decade, in the order the sweep runs (the methods issue #13 saw return their input
# unchanged or destroy the model first, so a time budget spends itself on them). {} is the profile's value.
WIDE_GRIDS: dict[str, list[dict]] = {
    "grad_ascent": [{"lr": 1e-5}, {}, {"lr": 1e-3}],
    "boundary_shrink": [{}, {"lr": 1e-4}, {"lr": 1e-3}],
    "ssd": [{"selection_weighting": 2.0}, {"selection_weighting": 5.0}, {}],
    # include_forget False: AMUN's "advonly" variant, which the CPU Fashion-MNIST sweep selected (fine-tuning
    # on D_F's true labels kept a memorising original's D_F memorised: hparams_fashion_mnist_small_cnn_e30c.md)
    "amun": [{}, {"lr": 0.001}, {"include_forget": False}],
    "amun_salun": [{"mask_ratio": 0.5}],
    "dlfd": [{}, {"lr": 0.001}, {"lr": 0.003}],
    "scrub": [{}, {"lr": 0.005}],
    "lcodec": [{}, {"l2_reg": 1.0}],
    "covarnav": [{}, {"lr": 0.001}],
    "finetune": [{}, {"lr": 0.03}, {"lr": 0.003}],
    "random_label": [{}, {"lr": 0.003}, {"lr": 0.001}],
    "salun": [{}, {"lr": 0.003}, {"lr": 0.001}],
    "neggrad_plus": [{}, {"lr": 0.001}],
    "l1_sparse": [{}, {"gamma": 1e-4}],
}
GRID_PRESETS = {"default": GRIDS, "wide": WIDE_GRIDS}


def grid_points(base: dict, grid: list[dict]) -> list[tuple[dict, dict]]:
    """``(overrides, kwargs)`` per distinct point of ``grid`` over the profile's ``base`` kwargs.

    A grid's second point is often the value a previous selection already put in the profile, so
    it equals ``{}``: such duplicates are dropped, and when the grid collapses to one point for a
    method with a learning rate, the rate is bracketed (x1/3, x3) so the sweep still compares.
    """
    points: list[tuple[dict, dict]] = []
    for overrides in grid:
        kwargs = {**base, **overrides}
        if all(kwargs != seen for _, seen in points):
            points.append((overrides, kwargs))
    if len(points) == 1 and isinstance(base.get("lr"), int | float):
        for factor in (1 / 3, 3):
            overrides = {"lr": float(f"{base['lr'] * factor:.2g}")}
            points.append((overrides, {**base, **overrides}))
    return points


def pool_for_tuning_size(tuning: int, val_fraction: float) -> int:
    """The smallest training subset whose tuning part (what :func:`validation_mask` leaves) has ``tuning`` samples.

    Why it matters: a method's amount of change grows with its number of steps, i.e. with |D_R|. l1-sparse's
    penalty is applied every step: selected on a tuning set 20% smaller than the table's training set (1,600 vs
    2,000 on Fashion-MNIST), its lr 0.1 stayed within 5 points of the retrains' validation accuracy, and fell 15
    below their test accuracy on the table (and 10 below on validation when tuned at 2,000:
    ``hparams_fashion_mnist_small_cnn_t2000.md``). Tune at the size the setting trains on.
    """
    if tuning < 1:
        raise SystemExit(f"select_hparams: --tuning-size must be >= 1, got {tuning}")
    if not 0.0 < val_fraction < 1.0:
        raise SystemExit(f"select_hparams: --val-fraction must be in (0, 1), got {val_fraction}")
    n = tuning  # n - round(f n) never decreases with n, so the first n that reaches it is the smallest
    while n - int(round(val_fraction * n)) < tuning:
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="profiles are read from here")
    sized = parser.add_mutually_exclusive_group()
    sized.add_argument("--train-size", type=int, default=None,
                       help="seeded subset of the training split (validation part included)")
    sized.add_argument("--tuning-size", type=int, default=None,
                       help="size the subset so that its tuning part has this many samples: the training-set size "
                            "of the setting being tuned for (every method's number of steps grows with |D_R|)")
    parser.add_argument("--pool", type=int, default=1, help="average-pool factor (2: 28x28 -> 14x14)")
    parser.add_argument("--pad-rgb", action="store_true",
                        help="pad 28x28 to 32x32, 3 channels (device_check's ResNet-18 table)")
    parser.add_argument("--epochs", type=int, default=15, help="baseline recipe epochs (params.yaml: 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="baseline recipe batch (params.yaml: 64)")
    parser.add_argument("--lr", type=float, default=None, help="baseline recipe learning rate (params.yaml's)")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=7)
    parser.add_argument("--retrains", type=int, default=2)
    parser.add_argument("--references", type=int, default=2)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--subsets", type=int, default=1,
                        help="(original, forget subset) pairs; a point must be sane on every one")
    parser.add_argument("--grid-preset", choices=sorted(GRID_PRESETS), default="default")
    parser.add_argument("--grid", default=None, help='JSON {"method": [overrides, ...]} replacing grid entries')
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new point after this many seconds (the log keeps what finished)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--write-params", default=None,
                        help="also write a copy of --params with the selected values merged into this setting's "
                             "profile (for device_check.py --params)")
    parser.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute batch-norm statistics on D_R after each method (default: --params' "
                             "unlearn.recalibrate_bn); select with the setting the pipeline runs with")
    parser.add_argument("--tag", default=None, help="log name suffix")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"select_hparams: --device {args.device} but CUDA is not available here", file=sys.stderr)
        raise SystemExit(2)  # before loading anything, as device_check does
    started = time.perf_counter()
    params = load_params(args.params)
    grids, names = sweep_plan(args)  # bad --grid / --methods fail here, before any training
    if args.write_params and Path(args.write_params).resolve() == Path(args.params).resolve():
        raise SystemExit("select_hparams: --write-params must not overwrite --params (it is a run artefact; "
                         "params.yaml is edited by hand from the sweep log)")
    source_text = Path(args.params).read_text()  # the copy starts from this, whatever happens to the file later
    train_size = args.train_size
    if args.tuning_size is not None:
        train_size = pool_for_tuning_size(args.tuning_size, args.val_fraction)
    # The test split is loaded by the shared loader but never used below.
    x_all, y_all, _, _ = load_data(args.dataset, args.data_path, train_size=train_size, pool=args.pool,
                                   seed=args.split_seed, pad_rgb=args.pad_rgb)
    val_mask = validation_mask(len(y_all), args.val_fraction, args.split_seed)
    if args.tuning_size is not None and int((~val_mask).sum()) != args.tuning_size:
        raise SystemExit(f"select_hparams: --tuning-size {args.tuning_size} needs {train_size} training samples with "
                         f"--val-fraction {args.val_fraction}; the {args.dataset} training split has {len(y_all)}")
    if not val_mask.any():
        raise SystemExit(f"select_hparams: --val-fraction {args.val_fraction} of {len(y_all)} samples leaves no "
                         "validation sample")
    validation = subset(x_all, y_all, val_mask)
    tune = subset(x_all, y_all, ~val_mask)
    recipe = replace(SGDRecipe.from_config(params.train), epochs=args.epochs, batch_size=args.batch_size,
                     augment=args.augment)
    if args.lr is not None:
        recipe = replace(recipe, lr=args.lr)
    # Subset s: its own original seed, forget seed, retrain and reference seeds (s = 0: the seeds above).
    refs = [prepare(tune.images, tune.labels, validation, model_name=args.model, recipe=recipe, device=args.device,
                    fraction=args.fraction, original_seed=1000 + s, forget_seed=2000 + s,
                    retrain_seeds=[4000 + 10 * s + j for j in range(args.retrains)],
                    reference_seeds=[5000 + 10 * s + k for k in range(args.references)])
            for s in range(args.subsets)]
    ref = refs[0]
    originals = [100.0 * (predict_logits(r.original, validation.images, device=args.device).argmax(1)
                          == validation.labels).float().mean().item() for r in refs]
    original_val = min(originals)
    # The untouched original, scored like every point: a selected point that is not lower than doing nothing
    # forgot nothing measurable, however its weights moved (review of 2026-12-07).
    # (with batch-norm statistics recomputed as every point's are)
    untouched_gaps = [gap(evaluate(untouched(r, args.device, recalibrate_bn(args, params)), r, args.device), r.target)
                      for r in refs]
    print(f"prepared in {time.perf_counter() - started:.0f}s; original validation accuracy {originals}; "
          f"retrain target {ref.target}", flush=True)
    key = params.unlearn.profile_key(args.dataset, args.model)
    profile = dict(params.unlearn.profiles.get(key, {}))
    recalibrate = recalibrate_bn(args, params)
    log, chosen, skipped, partial = {}, {}, [], []
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"hparams_{args.dataset}_{args.model}{'_' + args.tag if args.tag else ''}"
    paths = {suffix: out / f"{name}{suffix}" for suffix in (".json", ".md")}  # a dot in --tag stays in the name
    meta = {"command": recorded_command(args), "platform": platform.platform(), "torch": torch.__version__,
            "device": args.device, "recipe": vars(recipe), "image_shape": list(x_all.shape[1:]),
            "sizes": {"tune": len(tune), "validation": len(validation), "forget": len(ref.forget)},
            "original_validation_accuracy": original_val, "retrain_target": ref.target,
            "original_gap": float(np.mean(untouched_gaps)), "original_gap_per_subset": untouched_gaps,
            "retrains": ref.retrains, "profile_before": profile, "grid_preset": args.grid_preset,
            "budget_s": args.budget_s, "not_swept": skipped, "cut_short": partial, "recalibrate_bn": recalibrate}

    def write() -> None:
        """Rewrite the params copy (if asked) and then the log that vouches for it, each replaced whole."""
        meta["wall_seconds"] = time.perf_counter() - started
        if args.write_params:
            try:
                written = write_selected_params(source_text, params, Path(args.write_params), key,
                                                {n: c["kwargs"] for n, c in chosen.items()}, recalibrate_bn=recalibrate)
                meta["params_written"] = {"path": str(Path(args.write_params).resolve()), "sha256": written}
            except Exception as exc:  # noqa: BLE001 - the sweep's log is worth more than the copy
                meta["params_written"] = {"error": f"{type(exc).__name__}: {exc}"}
        texts = {".json": json.dumps({"meta": meta, "points": log, "chosen": chosen}, indent=2, default=str),
                 ".md": markdown(meta, log, chosen, args)}
        for suffix, text in texts.items():
            tmp = paths[suffix].with_name(paths[suffix].name + ".tmp")
            tmp.write_text(text)
            tmp.replace(paths[suffix])

    for name in names:
        base = params.unlearn.kwargs_for(name, args.dataset, args.model)
        if name == "amun_salun" and "amun" in chosen:
            base = {**base, **chosen["amun"]["kwargs"]}
        points = []
        planned = grid_points(base, grids.get(name, [{}]))
        last = 0.0  # this method's previous point took this long: the next is expected to take as long
        for overrides, kwargs in planned:
            if args.budget_s is not None and time.perf_counter() - started + last > args.budget_s:
                break
            point_started = time.perf_counter()
            try:
                runs = [run_one(name, r, kwargs, device=args.device, seed=3000 + s, recalibrate_bn=recalibrate)
                        for s, r in enumerate(refs)]
            except Exception as exc:  # noqa: BLE001 - a failing point is logged, not fatal
                runs = [{"error": f"{type(exc).__name__}: {exc}"}]
            last = time.perf_counter() - point_started
            if "error" in runs[0]:
                row = runs[0]
                admissible = False
            else:
                # every subset must keep half its original's accuracy and move; the gap is averaged
                admissible = all(r["weight_change"] > 0 and r["TA"] >= 0.5 * o and not r["diverged"]
                                 for r, o in zip(runs, originals, strict=True))
                row = {k: float(np.mean([r[k] for r in runs])) for k in (*METRICS, "LiRA", "gap", "time_ratio",
                                                                        "weight_change", "diverged", "seconds")}
                if len(runs) > 1:
                    row["per_subset"] = [{k: r[k] for k in ("TA", "gap", "weight_change")} for r in runs]
                row["info"] = [r.get("info") for r in runs]
            points.append({"overrides": overrides, "kwargs": kwargs, "admissible": admissible, **row})
            shown = "error" if "error" in row else \
                f"gap {row['gap']:.2f} TA {row['TA']:.1f} dw {row['weight_change']:.2g}"
            print(f"{name} {overrides}: {shown} ({time.perf_counter() - started:.0f}s)", flush=True)
        if not points:
            skipped.append(name)
            continue
        log[name] = points
        if len(points) < len(planned):  # the budget cut its grid: the best of part of a grid is no selection
            partial.append(name)
        else:
            ok = [p for p in points if p["admissible"]]
            best = min(ok, key=lambda p: p["gap"]) if ok else None
            if best is not None:
                per_subset = [q["gap"] for q in best.get("per_subset", [])] or [best["gap"]]
                chosen[name] = {"overrides": best["overrides"], "kwargs": best["kwargs"], "gap": best["gap"],
                                "below_original_on": sum(g < u for g, u in zip(per_subset, untouched_gaps,
                                                                               strict=True)),
                                "subsets": len(per_subset)}
        write()
    write()
    print(paths[".md"].read_text())


def sweep_plan(args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[str]]:
    """The grids and the methods in sweep order, checked before anything is trained.

    A preset's order is its priority (a time budget spends itself on the first methods); amun_salun
    runs after amun, whose selection it extends. Names are deduplicated.

    Raises:
        SystemExit: A --grid that is not JSON {"method": [{...}, ...]}, or an unknown method name.
    """
    grids = dict(GRID_PRESETS[args.grid_preset])
    if args.grid:
        try:
            extra = json.loads(args.grid)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"select_hparams: --grid is not JSON: {exc}") from None
        if not (isinstance(extra, dict) and all(isinstance(v, list) and all(isinstance(p, dict) for p in v)
                                                 for v in extra.values())):
            raise SystemExit('select_hparams: --grid must be {"method": [{overrides}, ...], ...}')
        grids.update(extra)
    known = [n for n in METHODS.names() if n != "retrain"]
    names = known if args.methods == "all" else list(dict.fromkeys(filter(None, args.methods.split(","))))
    unknown = sorted(set(names) - set(known)) + sorted(set(grids) - set(known))
    if unknown:
        raise SystemExit(f"select_hparams: unknown method(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    order = list(grids)
    names = sorted(names, key=lambda n: (n == "amun_salun", order.index(n) if n in order else len(order)))
    return grids, names


def recorded_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (every option given a value, shell-quoted)."""
    parts = ["python", "benchmarks/select_hparams.py"]
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            parts.append(flag)
        elif value is False and key == "recalibrate_bn":  # a BooleanOptionalAction: off is not its default
            parts.append("--no-recalibrate-bn")
        elif value is not None and value is not False:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def write_selected_params(source_text: str, before: Params, target: Path, key: str,
                          selected: dict[str, dict], *, recalibrate_bn: bool | None = None) -> str:
    """Write ``source_text`` (a params.yaml, parsed as ``before``) to ``target`` with ``selected`` merged into
    profile ``key``.

    Nothing else may change: a method whose resolved kwargs would move because it inherits from a
    selected one (amun_salun extends amun) is pinned to the values it had. The copy is checked with
    ``load_params`` before it replaces ``target``, so a consumer (device_check.py ``--params``) never
    reads a half-written or invalid file; a rejected copy leaves no temporary file. Comments and
    anchors are not kept (it is a run artefact; the committed params.yaml is edited by hand from the
    sweep log). ``recalibrate_bn`` (when given) is written as ``unlearn.recalibrate_bn``: values selected
    with batch-norm statistics recomputed are run that way by whoever reads the copy.

    Returns:
        The SHA-256 of the written file (the sweep log records it, so a reader can tell which log
        vouches for which file).
    """
    import hashlib

    target.parent.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(source_text)
    if recalibrate_bn is not None:
        raw.setdefault("unlearn", {})["recalibrate_bn"] = bool(recalibrate_bn)
    profiles = raw.setdefault("unlearn", {}).setdefault("profiles", {})
    profile = dict(profiles.get(key) or {})
    profile.update({name: dict(kwargs) for name, kwargs in selected.items()})
    profiles[key] = profile
    dataset, model = key.split("/", 1)

    def resolved(params: Params, name: str) -> dict:
        """Every argument the method would run with (its signature's defaults filled in), as YAML writes it."""
        bound = METHODS.get(name).bind(params.unlearn.kwargs_for(name, dataset, model))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.items()}

    after = load_params_text(yaml.safe_dump(raw, sort_keys=False), target)
    for name in METHODS.names():
        if name not in selected and resolved(before, name) != resolved(after, name):
            # Every argument written out: a partial entry would still inherit the keys it does not name from the
            # selected method it extends (amun_salun got amun's newly selected include_forget that way).
            profile[name] = resolved(before, name)
    text = yaml.safe_dump(raw, sort_keys=False)
    after = load_params_text(text, target)  # strict: raises on anything the pipeline would reject
    moved = [name for name in METHODS.names()
             if name not in selected and resolved(before, name) != resolved(after, name)]
    if moved:
        raise ValueError(f"the params copy would change unselected method(s) {', '.join(moved)}")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return hashlib.sha256(text.encode()).hexdigest()


def load_params_text(text: str, near: Path):
    """``load_params`` of a params text (through a temporary file next to ``near``, always removed)."""
    tmp = near.with_name(near.name + ".check.tmp")
    try:
        tmp.write_text(text)
        return load_params(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def markdown(meta: dict, log: dict, chosen: dict, args) -> str:
    target = meta["target"] if "target" in meta else meta["retrain_target"]
    lines = [f"# Hyperparameter selection: {args.dataset} / {args.model} ({args.device})", "",
             f"Command: `{meta['command']}`", "",
             f"Validation split carved from the training data (split seed {args.split_seed}, "
             f"{meta['sizes']['validation']} validation / {meta['sizes']['tune']} tuning samples, "
             f"forget {meta['sizes']['forget']}); the test split is never read. Original seed 1000, forget seed "
             f"2000, run seed 3000 (subset s: each + s; {args.subsets} subsets, metrics averaged, admissible only "
             f"if sane on every subset), {args.retrains} retrains (target = their mean), {args.references} reference "
             "models on halves of D_R for offline RMIA. TA below is VALIDATION accuracy. Admissible: weights "
             "moved and validation accuracy >= half the original's "
             f"({meta['original_validation_accuracy']:.2f}). Selected: smallest Avg Gap among admissible points "
             f"(**bold**). Images {meta.get('image_shape')}, grid preset {meta.get('grid_preset', 'default')}. "
             + ("Batch-norm statistics recomputed on D_R after every method (`unlearn.recalibrate_bn`). "
                if meta.get("recalibrate_bn") else "")
             + f"Wall time {meta['wall_seconds']:.0f} s"
             + (f" (budget {meta['budget_s']:.0f} s: no point starts after it)" if meta.get("budget_s") else "")
             + ".", "",
             *([f"Not swept (time budget spent; their profile values stand): {', '.join(meta['not_swept'])}.", ""]
               if meta.get("not_swept") else []),
             *([f"Cut short by the time budget, so not selected (the best of part of a grid is no selection; their "
                f"profile values stand): {', '.join(meta['cut_short'])}.", ""] if meta.get("cut_short") else []),
             "Retrain target: " + ", ".join(f"{m} {target[m]:.2f}" for m in (*METRICS, "LiRA")), "",
             *([f"The untouched original (batch-norm statistics recomputed as the points' are, when they are) scores "
                f"Avg Gap {meta['original_gap']:.2f} (per subset: "
                + ", ".join(f"{g:.2f}" for g in meta["original_gap_per_subset"]) + "); a selected point below "
                "it on fewer than every subset is marked NOT BELOW THE ORIGINAL (it forgot nothing measurable "
                "there, however far its weights moved).", ""] if "original_gap" in meta else []),
             "| method | overrides | UA | RA | TA (val) | RMIA AUC | Avg Gap | time / retrain | Δw | admissible |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, points in log.items():
        for p in points:
            mark = "**" if name in chosen and p["overrides"] == chosen[name]["overrides"] else ""
            if "error" in p:
                lines.append(f"| {name} | {p['overrides']} | error: {p['error'][:80]} | | | | | | | no |")
                continue
            cells = " | ".join(f"{p[m]:.2f}" for m in METRICS)
            lines.append(f"| {name} | `{json.dumps(p['overrides'])}` | {cells} | {mark}{p['gap']:.2f}{mark} | "
                         f"{p['time_ratio']:.3f} | {p['weight_change']:.2g} | {'yes' if p['admissible'] else 'no'} |")
    below = [f"{n} ({c['below_original_on']}/{c['subsets']} subsets)" for n, c in chosen.items()
             if "below_original_on" in c and c["below_original_on"] < c["subsets"]]
    if below:
        lines += ["", f"NOT BELOW THE ORIGINAL on every subset: {', '.join(below)}."]
    lines += ["", "Selected values, merged into the profile (`unlearn.profiles` in params.yaml):", "", "```yaml",
              yaml.safe_dump({f"{args.dataset}/{args.model}": {n: c["kwargs"] for n, c in chosen.items()}},
                             sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
