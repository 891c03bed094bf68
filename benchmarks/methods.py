"""Benchmark: every registered unlearning method against retraining, following AMUN's protocol.

Protocol (benchmarks/protocol.py; methods.md section 1; AMUN section 5.2 and App. C):
- Setting: a random forget subset (``--fraction``, 10%) with the retain set D_R.
- Seeds: repetition i trains its original with seed 100+i, draws its forget subset with seed
  200+i and runs every method with seed 300+i (three separate seeds; AMUN crosses 3 x 3 x 3).
- Target: the mean of ``--retrains`` (>= 3) retrains on D_R with seeds 400+10i+j. The spread of
  one retrain around the mean of the others is reported as the "retrain" row: the noise floor
  no method can be told apart from.
- MIA: offline RMIA (the gap's MIA) and offline LiRA, with ``--references`` reference models
  trained on complementary halves of D_R (seeds 500+10i+k), forget vs test ROC-AUC in percent.
- Avg Gap: mean over UA, RA, TA, RMIA AUC of |metric - retrain mean|, per repetition; the
  table shows the mean and the 95% Student-t confidence half-width over repetitions.
- Hyperparameters: params.yaml's profile for the dataset and model (``unlearn.profiles``),
  selected on a validation split of the training data by benchmarks/select_hparams.py where a
  sweep was run for that setting (the table says whether it was); every method is tuned that
  same way. The test split is only read here.
- Cost: wall time / the mean retrain's wall time, same process (noisy on a shared machine).
- What each run did: relative weight change Δw (0 = returned unchanged) and the numbers the
  methods record (SSD's dampened share, DLFD's perturbed batches, L-CODEC's mode); L-CODEC's
  certified mode (noise on, one sample per request) is timed on a few requests and extrapolated.

Writes benchmarks/results/methods_<dataset>.{json,md,png}.

Usage:
    nice -n 10 python benchmarks/methods.py                     # embedded digits, CPU, 3 seeds
    python benchmarks/methods.py --device cuda --dataset fashion_mnist --model resnet18 --augment
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # run as a script without an install (a lent GPU machine)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from protocol import (  # noqa: E402
    METRICS,
    evaluate,
    gap,
    holm,
    load_data,
    paired_difference,
    prepare_repetition,
    recalibrate_bn,
    run_one,
    t_interval,
    untouched,
    wait_for,
    weight_change,
)

from unlearn.config import load_params  # noqa: E402
from unlearn.methods import METHODS, TensorSet, UnlearningData, run_method  # noqa: E402
from unlearn.methods.base import method_info  # noqa: E402
from unlearn.training import SGDRecipe, predict_logits  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NUMBERS = (*METRICS, "LiRA", "gap", "time_ratio", "weight_change")


def certified_lcodec(ref, kwargs: dict, *, requests: int, device: str, seed: int) -> dict:
    """L-CODEC in its certified mode on the first ``requests`` forget samples, one per request.

    Each run pays a one-off setup (L-CODEC recomputes its training trace from D_R + D_F) besides the
    per-request work, so the run is timed at 1 and at ``requests`` requests: the slope is the time per
    request, the rest the setup, and the extrapolation to all of D_F is setup + slope x |D_F| (dividing
    the total by the request count charged the setup to every request: 27x a retrain at 1 request,
    15x at 4 and 10x at 16 on the same quick setting). Returns that, test accuracy and Δw after the
    ``requests`` requests, and the noise sigma used.
    """
    n = len(ref.forget) + len(ref.retain)

    def timed(count: int):
        forget = TensorSet(ref.forget.images[:count], ref.forget.labels[:count])
        data = UnlearningData(forget, ref.retain, ref.data.num_classes, ref.data.train_recipe, ref.data.model_factory)
        wait_for(device)
        started = time.perf_counter()
        model = run_method("lcodec", ref.original, data, device=device, seed=seed,
                           kwargs={**kwargs, "noise": True, "scrub_batch_size": 1, "n_train": n})
        wait_for(device)
        return model, time.perf_counter() - started

    if torch.device(device).type == "cuda":
        timed(1)  # untimed: CUDA's first calls (lazy set-up, kernel loading) would be charged to the slope x |D_F|
    model, seconds = timed(requests)
    if requests > 1:
        _, one = timed(1)
        per_request = max(seconds - one, 0.0) / (requests - 1)
        setup = max(one - per_request, 0.0)
    else:  # one point: the setup cannot be separated and is charged to the request
        per_request, setup = seconds, 0.0
    accuracy = 100.0 * (predict_logits(model, ref.evaluation.images, device=device).argmax(1)
                        == ref.evaluation.labels).float().mean().item()
    return {"requests": requests, "seconds_per_request": per_request, "setup_seconds": setup,
            "extrapolated_ratio": (setup + per_request * len(ref.forget)) / ref.retrain_seconds,
            "TA_after": accuracy, "weight_change": weight_change(ref.original, model),
            "noise_std": method_info(model).get("noise_std"),
            "reverted_requests": method_info(model).get("reverted_requests")}


RECALIBRATED = "original+bn"  # the original with batch-norm statistics recomputed on D_R, as every method's are
REFERENCE_ROWS = ("retrain", "original", RECALIBRATED)  # rows that are not methods


def run_repetition(i: int, data, args, params, recipe, progress=None, deadline: float | None = None) -> dict:
    """One repetition: its original, retrains and references, then every method against them.

    ``progress``, when given, is called after each method with the repetition as it stands (the same shape
    as the return value, holding the rows done so far): device_check writes it, so a run that a time limit
    kills mid-repetition still leaves the rows it finished. ``deadline`` (a ``time.perf_counter()`` value): no
    method starts after it; the rows of those not run are absent (``stopped`` says how many ran).
    """
    x_train, y_train, test = data
    prepare_started = time.perf_counter()
    ref = prepare_repetition(i, x_train, y_train, test, args, recipe)
    prepare_seconds = time.perf_counter() - prepare_started
    sizes = {"forget": len(ref.forget), "retain": len(ref.retain), "test": len(ref.evaluation)}
    rows: dict[str, dict] = {}
    # Noise floor: each retrain against the mean of the OTHER retrains.
    noise = []
    for j, row in enumerate(ref.retrains):
        others = [r for k, r in enumerate(ref.retrains) if k != j]
        target = {m: float(np.mean([r[m] for r in others])) for m in (*METRICS, "LiRA")}
        noise.append(gap(row, target))
    rows["retrain"] = {**{m: ref.target[m] for m in (*METRICS, "LiRA")}, "gap": float(np.mean(noise)),
                       "time_ratio": 1.0, "weight_change": float("nan")}
    original = evaluate(ref.original, ref, args.device)
    rows["original"] = {**original, "gap": gap(original, ref.target), "time_ratio": 0.0, "weight_change": 0.0}
    if recalibrate_bn(args, params):  # doing nothing but what follows every method: the baseline they are told from
        baseline = evaluate(untouched(ref, args.device, True), ref, args.device)
        rows[RECALIBRATED] = {**baseline, "gap": gap(baseline, ref.target), "time_ratio": 0.0, "weight_change": 0.0}
    names = [n for n in METHODS.names() if n != "retrain"] if args.methods == "all" else args.methods.split(",")
    overrides = getattr(args, "overrides", None) or {}  # benchmarks/device_check.py --quick: shorter loops
    stopped = None
    for k, name in enumerate(names):
        if deadline is not None and time.perf_counter() > deadline:
            stopped = f"{k} of {len(names)} methods run before the time budget ran out"
            break
        kwargs = {**params.unlearn.kwargs_for(name, args.dataset, args.model), **overrides.get(name, {})}
        try:
            row_started = time.perf_counter()
            rows[name] = run_one(name, ref, kwargs, device=args.device, seed=300 + i,
                                 recalibrate_bn=recalibrate_bn(args, params))
            rows[name]["wall_seconds"] = time.perf_counter() - row_started  # with its evaluation (device_check)
        except Exception as exc:  # device_check (catch_errors): a crash is a finding, reported in its row
            if not getattr(args, "catch_errors", False):
                raise
            rows[name] = {"error": error_text(exc)}
        if progress is not None:
            progress({"rows": dict(rows), "extra": {}, "retrain_seconds": ref.retrain_seconds, "sizes": sizes,
                      "prepare_seconds": prepare_seconds})
    extra = {"stopped": stopped} if stopped else {}
    if (i == 0 and args.lcodec_requests > 0 and "lcodec" in names and "lcodec" in rows
            and (deadline is None or time.perf_counter() <= deadline)):
        try:
            extra["lcodec_certified"] = certified_lcodec(
                ref, params.unlearn.kwargs_for("lcodec", args.dataset, args.model), requests=args.lcodec_requests,
                device=args.device, seed=300 + i)
        except Exception as exc:  # as for the methods above (device_check's catch_errors)
            if not getattr(args, "catch_errors", False):
                raise
            extra["lcodec_certified"] = {"error": error_text(exc)}
    return {"rows": rows, "extra": extra, "retrain_seconds": ref.retrain_seconds, "sizes": sizes,
            "prepare_seconds": prepare_seconds}


def error_text(exc: BaseException, limit: int = 300) -> str:
    """A caught error as one table-safe line: type and message, whitespace collapsed, no "|"."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit].replace("|", "/")


def aggregate(reps: list[dict]) -> dict:
    out = {}
    for name in reps[0]["rows"]:
        # a row absent from a repetition: the time budget stopped that repetition before the method (device_check)
        present = [r["rows"][name] for r in reps if name in r["rows"]]
        runs = [row for row in present if "error" not in row]
        errors = sorted({row["error"] for row in present if "error" in row})
        entry = {"errors": errors} if errors else {}
        if len(present) < len(reps):
            entry["not_run"] = len(reps) - len(present)
        for key in NUMBERS:
            mean, half = t_interval([r.get(key, float("nan")) for r in runs])
            entry[key] = {"mean": mean, "ci95": half}
        infos = [r.get("info", {}) for r in runs]
        keys = sorted({k for info in infos for k in info})
        entry["info"] = {k: [info.get(k) for info in infos] for k in keys}
        entry["diverged"] = any(r.get("diverged", 0) for r in runs)
        out[name] = entry
    return out


def _cell(entry: dict, key: str, digits: int = 2) -> str:
    mean, half = entry[key]["mean"], entry[key]["ci95"]
    if np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if not np.isnan(half) else f"{mean:.{digits}f}"


def profile_provenance(profile: str) -> str:
    """Whether ``profile`` was selected by a committed sweep (its log exists) or only inherited."""
    log = RESULTS / f"hparams_{profile.replace('/', '_')}.md"
    if log.exists():
        return (f"selected on a validation split of the training data by benchmarks/select_hparams.py; "
                f"sweep log {log.relative_to(REPO)}")
    partial = sorted(RESULTS.glob(f"{log.stem}_*.md"))
    covered: set[str] = set()
    for path in partial:  # each partial sweep's JSON names the methods it chose values for
        saved = path.with_suffix(".json")
        if saved.exists():
            covered |= set(json.loads(saved.read_text()).get("chosen") or {})
    logs = ", ".join(path.relative_to(REPO).as_posix() for path in partial)
    if partial and covered >= set(METHODS.names()) - {"retrain"}:
        return (f"selected method by method on a validation split of the training data by "
                f"benchmarks/select_hparams.py; sweep logs {logs}; the test split was not used to choose anything")
    swept = f"; sweeps of some methods only: {logs}" if partial else ""
    return ("NOT selected as a whole for this setting (see its comment in params.yaml for what it inherits"
            f"{swept}); the test split was not used to choose anything")


def _gaps(reps: list[dict], name: str) -> list[float]:
    """A row's Avg Gap in each repetition; nan where it raised or was not run."""
    rows = [r["rows"].get(name, {"error": "not run"}) for r in reps]
    return [row.get("gap", float("nan")) if "error" not in row else float("nan") for row in rows]


def paired_section(results: dict, reps: list[dict], retrains: int) -> list[str]:
    """Every row's Avg Gap against the lowest method's, repetition by repetition (markdown lines).

    Overlapping per-row intervals do not settle an order: both rows move with the repetition's
    original and forget subset. The paired differences do, as far as the repetitions allow. The
    retrain row is shown but kept out of the Holm family: its gap is one retrain against the mean
    of the OTHER retrains (leave-one-out), a method's is against the mean of all of them, so the two
    do not share a target and the row is the noise floor's scale, not a same-target comparison.
    """
    methods = [k for k in results if k not in REFERENCE_ROWS and not np.isnan(results[k]["gap"]["mean"])]
    if len(reps) < 2 or not methods:
        return []
    best = min(methods, key=lambda k: results[k]["gap"]["mean"])

    if sum(not np.isnan(g) for g in _gaps(reps, best)) < 2:  # one repetition of the best row: nothing to pair
        return []
    rest = sorted((k for k in methods if k != best), key=lambda k: results[k]["gap"]["mean"])
    others = [k for k in REFERENCE_ROWS if k in results] + rest
    paired = {name: paired_difference(_gaps(reps, name), _gaps(reps, best)) for name in others}
    family = [name for name in others if name != "retrain"]
    adjusted = holm({name: paired[name]["p_t"] for name in family})
    floor = min(paired[name]["p_floor"] for name in family)
    lines = ["", f"## Paired against the lowest method ({best})", "",
             f"Avg Gap of each row minus {best}'s in the same repetition (same original, forget subset, retrains "
             "and references): mean ± 95% Student-t half-width, the repetitions in which "
             f"{best} was lower, the paired t-test's two-sided p-value, raw and Holm-adjusted over the "
             f"{len(family)} rows other than the retrain (it assumes roughly normal differences), and the exact "
             "two-sided sign-flip "
             f"p-value, which assumes only symmetry. With {len(reps)} repetitions the smallest possible "
             f"sign-flip p is {floor:.3g}"
             + (", so no row can reach 0.05 by that test however large the difference." if floor > 0.05 else ".")
             + " The best row was picked from the same data, so the order among rows within about one "
               "half-width of it is not settled. The retrain row is not a same-target comparison: each retrain "
               "is scored against the mean of the other retrains, a method against the mean of all of them, "
               "which puts the retrain row's expected gap higher (for Gaussian noise by "
               f"{100 * (math.sqrt((1 + 1 / (retrains - 1)) / (1 + 1 / retrains)) - 1):.0f}% with {retrains} "
               "retrains); it shows where the noise floor lies, outside the Holm family.", "",
             f"| Row | gap - {best} | {best} lower | p (t) | p (t, Holm) | p (sign flip) |",
             "|---|---|---|---|---|---|"]
    for name in others:
        e = paired[name]
        diff = f"{e['mean']:+.2f} ± {e['ci95']:.2f}" if not np.isnan(e["ci95"]) else f"{e['mean']:+.2f}"
        label = "retrain (noise floor, leave-one-out target)" if name == "retrain" else name
        held = f"{adjusted[name]:.3g}" if name in adjusted else "-"
        lines.append(f"| {label} | {diff} | {e['baseline_lower']}/{e['n']} | {e['p_t']:.3g} | "
                     f"{held} | {e['p_sign_flip']:.3g} |")
    return lines


def _as_original(name: str, reps: list[dict]) -> str:
    """A label when a method's Avg Gap cannot be told from the untouched original's, paired by repetition.

    Moving the weights at all met "not returned unchanged" to the letter: gradient ascent (Δw 1e-4) and L-CODEC
    (4e-4) on digits were +0.03 ± 0.08 from doing nothing (review of 2026-12-07). A method whose paired 95%
    interval of (original's gap - its gap) reaches 0 did not measurably forget; with one repetition there is no
    interval, so no label.
    """

    if len(reps) < 2:
        return ""
    # the original with its statistics recomputed when the methods' are (tables from before that row: as trained)
    baseline = RECALIBRATED if all(RECALIBRATED in r["rows"] for r in reps) else "original"
    e = paired_difference(_gaps(reps, baseline), _gaps(reps, name))
    if e["n"] < 2 or np.isnan(e["ci95"]):
        return " (one repetition: not compared with the original)"
    shown = f"paired: {e['mean']:+.2f} ± {e['ci95']:.2f}"
    # the original's gap minus the method's; within half the shown precision (0.005 points) of 0 counts as 0 (SSD
    # on the ResNet-18 proxy differs by -0.00025 in both repetitions, so its interval has no width)
    if e["mean"] + e["ci95"] < -0.005:
        return f" (WORSE THAN THE ORIGINAL, {shown})"
    return f" (NOT TOLD FROM THE ORIGINAL, {shown})" if e["mean"] - e["ci95"] <= 0.005 else ""


def markdown(results: dict, reps: list[dict], meta: dict) -> str:
    lines = [f"# Unlearning methods vs retraining: {meta['dataset']}, {meta['model']}, {meta['device']}", "",
             f"Command: `{meta['command']}`", "",
             f"Random {100 * meta['fraction']:.0f}% forget with D_R; {meta['seeds']} repetitions"
             + (f" (i = {meta['first_repetition']}..{meta['first_repetition'] + meta['seeds'] - 1})"
                if meta.get("first_repetition") else "")
             + ", each with its own original seed (100+i), forget-subset seed (200+i) and run seed (300+i)"
             + (f"; training and test subsets drawn with data seed {meta['data_seed']}" if meta.get("data_seed")
                else "") + ". Target: the mean of "
             f"{meta['retrains']} retrains; MIA: offline RMIA AUC (forget vs test) with {meta['references']} reference "
             "models on halves of D_R (LiRA: offline LiRA AUC, not in the gap). Cells: mean ± 95% Student-t "
             "half-width over repetitions. Hyperparameters: params.yaml profile "
             f"`{meta['profile']}` ({meta.get('provenance') or profile_provenance(meta['profile'])}). Recipe: "
             + ", ".join(f"{k} {v}" for k, v in meta["recipe"].items())
             + ". Batch-norm statistics "
             + ("recomputed on D_R after every method in the table (`unlearn.recalibrate_bn`; not in the "
                "certified L-CODEC timing)" if meta.get("recalibrate_bn")
                else "as each method leaves them (`unlearn.recalibrate_bn` off)")
             + f". Sizes: {meta['sizes']}. Wall time {meta['wall_seconds']:.0f} s on "
             f"{meta.get('machine', 'a shared 2-core machine (time ratios are noisy)')}.", "",
             "The **retrain** row's Avg Gap is one retrain against the mean of the others: the noise floor. A "
             "method whose gap interval overlaps it cannot be told apart from retraining; one whose interval "
             "overlaps the **original**'s cannot be told apart from doing nothing. Rows marked NOT TOLD FROM "
             "THE ORIGINAL: the original's gap minus the method's, paired by repetition (mean ± 95% Student-t "
             "half-width shown), has an interval containing 0, so the method did not measurably forget; WORSE THAN "
             "THE ORIGINAL: the interval lies below 0. The original compared with is "
             + ("**original+bn**, the original with its batch-norm statistics recomputed on D_R as every "
                "method's are." if any(RECALIBRATED in r["rows"] for r in reps) else
                "the original as trained (this table has no recalibrated original: with recalibration on, part of "
                "a difference may be the recalibration's).")
             + " A row with one repetition has no interval and is not compared.", "",
             "| Method | UA | RA | TA | RMIA AUC | LiRA AUC | Avg Gap | time / retrain | Δw |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = [k for k in REFERENCE_ROWS if k in results] + sorted((k for k in results if k not in REFERENCE_ROWS),
                                             key=lambda k: np.nan_to_num(results[k]["gap"]["mean"], nan=np.inf))
    for name in order:
        e = results[name]
        label = name + (" (diverged)" if e["diverged"] else "")
        if e.get("errors"):
            raised = sum("error" in r["rows"].get(name, {}) for r in reps)
            label += f" (RAISED in {raised}/{len(reps)}: {'; '.join(e['errors'])})"
        if e.get("not_run"):
            label += f" (not run in {e['not_run']}/{len(reps)} repetition(s))"
        if name not in REFERENCE_ROWS:  # the contract of tests/core/test_methods_contract.py
            rows = [(r["rows"][name], r["rows"]["original"]) for r in reps
                    if name in r["rows"] and "error" not in r["rows"][name]]
            unchanged = sum(row["weight_change"] == 0.0 for row, _ in rows)
            destroyed = sum(row["TA"] < 0.5 * orig["TA"] for row, orig in rows)
            if unchanged:
                label += f" (UNCHANGED in {unchanged}/{len(rows)})"
            if destroyed:
                label += f" (BELOW HALF THE ORIGINAL'S TA in {destroyed}/{len(rows)})"
            label += _as_original(name, reps)
        ratio = "1" if name == "retrain" else "-" if name in REFERENCE_ROWS else _cell(e, "time_ratio", 3)
        dw = "-" if name == "retrain" or np.isnan(e["weight_change"]["mean"]) else f"{e['weight_change']['mean']:.2g}"
        lines.append(f"| {label} | " + " | ".join(_cell(e, m) for m in (*METRICS, "LiRA")) +
                     f" | {_cell(e, 'gap')} | {ratio} | {dw} |")
    lines += paired_section(results, reps, meta["retrains"])
    did = []
    for name in order:
        info = results[name].get("info") or {}
        if info:
            shown = "; ".join(f"{k} = {[round(v, 4) if isinstance(v, float) else v for v in vals]}"
                              for k, vals in info.items())
            did.append(f"- **{name}** (per repetition): {shown}")
    if did:
        lines += ["", "## What the runs did", "", *did]
    if meta.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in meta["notes"]]
    cert = reps[0]["extra"].get("lcodec_certified")
    if cert and "error" in cert:
        lines += ["", f"L-CODEC's certified mode raised: {cert['error']}"]
    elif cert:
        lines += ["", f"L-CODEC in the table runs **uncertified** (`noise: false`: the Newton step alone, no (ε, δ) "
                  f"guarantee; Δw above). Its certified mode (noise on, one sample per request, repetition 0, first "
                  f"{cert['requests']} forget samples): {cert['seconds_per_request']:.2f} s per request"
                  + (f" after a one-off {cert['setup_seconds']:.2f} s setup (timed at 1 and {cert['requests']} "
                     "requests)" if "setup_seconds" in cert else "")
                  + f", so removing all of D_F would take about {cert['extrapolated_ratio']:.1f}x a retrain; noise σ "
                  f"{cert['noise_std']:.3g}; after those {cert['requests']} requests test accuracy "
                  f"{cert['TA_after']:.2f}% and Δw {cert['weight_change']:.2g}."]
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    floor = results["retrain"]["gap"]["mean"]
    ax.axhline(floor, color="grey", ls="--", lw=1, label="retrain vs retrains (noise floor)")
    ax.axhline(results["original"]["gap"]["mean"], color="red", ls=":", lw=1, label="original (no unlearning)")
    for name, e in results.items():
        if name in REFERENCE_ROWS:
            continue
        half = 0.0 if np.isnan(e["gap"]["ci95"]) else e["gap"]["ci95"]
        # an Avg Gap is never negative: the interval's lower arm stops at 0
        yerr = [[min(half, e["gap"]["mean"])], [half]]
        ax.errorbar(max(e["time_ratio"]["mean"], 1e-3), e["gap"]["mean"], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(name, (max(e["time_ratio"]["mean"], 1e-3), e["gap"]["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlapped within a decade
    ax.set_ylim(bottom=0)
    ax.set_xlabel("wall time / retrain")
    ax.set_ylabel("Avg Gap to the retrain mean (points, 95% CI)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="repetitions (original, subset, run seeds each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12, help="baseline recipe epochs (params.yaml: 30)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--retrains", type=int, default=3)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--lcodec-requests", type=int, default=5)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute batch-norm statistics on D_R after each method (default: params.yaml's "
                             "unlearn.recalibrate_bn)")
    parser.add_argument("--tag", default=None, help="output name suffix (default: the dataset)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the --train-size/--test-size subsets (another draw: a fresh test set)")
    parser.add_argument("--first-repetition", type=int, default=0,
                        help="number the repetitions from N (their seeds follow: fresh seeds for a confirmatory run)")
    parser.add_argument("--render", default=None, help="only rewrite the md and png from this results JSON")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        stem = Path(args.render).with_suffix("")
        stem.with_suffix(".md").write_text(markdown(saved["results"], saved["repetitions"], saved["meta"]))
        plot(saved["results"], stem.with_suffix(".png"))
        return
    if args.retrains < 3:
        parser.error("--retrains: the target is the mean of at least 3 retrains")
    started = time.perf_counter()
    params = load_params(REPO / "params.yaml")
    x_train, y_train, x_test, y_test = load_data(args.dataset, args.data_path, train_size=args.train_size,
                                                 test_size=args.test_size, pool=args.pool, seed=args.data_seed)
    recipe = replace(SGDRecipe.from_config(params.train), epochs=args.epochs, batch_size=args.batch_size,
                     augment=args.augment)
    data = (x_train, y_train, TensorSet(x_test, y_test))
    reps = []
    for i in range(args.first_repetition, args.first_repetition + args.seeds):
        reps.append(run_repetition(i, data, args, params, recipe))
        print(f"repetition {i} done ({time.perf_counter() - started:.0f}s)", flush=True)
    results = aggregate(reps)
    key = params.unlearn.profile_key(args.dataset, args.model)
    command = "nice -n 10 python benchmarks/methods.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
        if v not in (None, False) and not (k in ("data_seed", "first_repetition") and v == 0)) + (
        "" if args.recalibrate_bn is not False else " --no-recalibrate-bn")
    meta = {"command": command, "dataset": args.dataset, "model": args.model, "device": args.device,
            "data_seed": args.data_seed, "first_repetition": args.first_repetition,
            "seeds": args.seeds, "retrains": args.retrains, "references": args.references, "fraction": args.fraction,
            "profile": key if key in params.unlearn.profiles else "(none: defaults)", "recipe": vars(recipe),
            "sizes": reps[0]["sizes"], "platform": platform.platform(), "torch": torch.__version__,
            "recalibrate_bn": recalibrate_bn(args, params), "wall_seconds": time.perf_counter() - started,
            # What the run depended on, recorded when it ran: the provenance was recomputed from the sweep logs
            # present at render time, and the kwargs were not kept at all (review of 2026-12-07).
            "provenance": profile_provenance(key),
            "kwargs": {name: params.unlearn.kwargs_for(name, args.dataset, args.model)
                       for name in ([n for n in METHODS.names() if n != "retrain"] if args.methods == "all"
                                    else args.methods.split(","))}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"methods_{args.tag or args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results, "repetitions": reps},
                                                    indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(results, reps, meta))
    plot(results, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
