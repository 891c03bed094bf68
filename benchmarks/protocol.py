"""The unlearning evaluation protocol shared by ``methods.py`` (the table) and ``select_hparams.py``
(the hyperparameter sweep), so that the sweep optimises exactly what the table reports.

- Data: a registered source (``digits``, ...) or Fashion-MNIST read from its idx files (Debian's
  ``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist, or a directory), optionally
  a seeded subset and 2x2 average-pooled (28x28 -> 14x14) so a small CNN runs in minutes on a CPU.
- Seeds: the original model, the forget subset and the unlearning run each get their own seed.
- Retrain target: the MEAN of several retrains (different initialisations) on D_R, so a gap is
  not measured against one retrain's noise; the spread of single retrains around that mean is
  reported as the noise floor of the gap.
- MIA: offline RMIA and offline LiRA (the pipeline's ``rmia_offline`` / ``lira_offline``) with
  reference models trained on complementary random halves of D_R, so every forget and test
  sample is OUT for every reference; the population is the evaluation (test or validation) set.
  The AUC separates D_F from that set (AMUN's "FT AUC"; 50 means indistinguishable).
- Metrics: UA = accuracy on D_F (raw, as AMUN), RA on D_R, TA on the evaluation set, MIA = RMIA
  AUC; Avg Gap = mean over the four of |metric - mean over retrains|, in points.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from unlearn.attacks import AttackInput, ReferenceSignals, compute_signals, run_attack
from unlearn.attacks.signals import logit_scaled_confidence
from unlearn.config import DataConfig
from unlearn.data import load_source
from unlearn.methods import TensorSet, UnlearningData, run_method
from unlearn.methods.base import method_info
from unlearn.metrics import roc_auc
from unlearn.models import build_model
from unlearn.training import SGDRecipe, predict_logits, to_float, train_model

METRICS = ("UA", "RA", "TA", "MIA")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (directory / name).exists():
                return directory / name
        raise FileNotFoundError(f"{directory}: no {stem}(.gz); install Debian's dataset-fashion-mnist "
                                "or pass --data-path")

    return (_read_idx(find("train-images-idx3-ubyte")), _read_idx(find("train-labels-idx1-ubyte")),
            _read_idx(find("t10k-images-idx3-ubyte")), _read_idx(find("t10k-labels-idx1-ubyte")))


def wait_for(device: str | torch.device) -> None:
    """Block until ``device`` has run everything queued (CUDA), so a timer read after it is the work's time.

    Without it a method that never reads back a result stops the clock with its kernels still queued.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def pad_to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 3, 32, 32): zero-padded and repeated to 3 channels (issue #13's ResNet-18 setting)."""
    return F.pad(images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)


def load_data(name: str, data_path: str | None = None, *, train_size: int | None = None,
              test_size: int | None = None, pool: int = 1, seed: int = 0, pad_rgb: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): float images in [0, 1] (N, C, H, W), int64 labels.

    Args:
        name: "fashion_mnist" (idx files) or a registered source name.
        data_path: Directory of the data (default for Fashion-MNIST: Debian's location).
        train_size: Seeded random subset of the training split (None: all).
        test_size: Seeded random subset of the test split (None: all).
        pool: Average-pool factor (2: 28x28 -> 14x14).
        seed: Seed of the subsets.
        pad_rgb: Pad 28x28 images to 32x32 and repeat them to 3 channels (the ResNet-18 setting of
            issue #13 and ``benchmarks/device_check.py``'s table).
    """
    if name == "fashion_mnist":
        xtr, ytr, xte, yte = _fashion_mnist(Path(data_path) if data_path else FASHION_MNIST_DIR)
        x_train, x_test = torch.from_numpy(xtr.copy()).float()[:, None] / 255.0, \
            torch.from_numpy(xte.copy()).float()[:, None] / 255.0
        y_train, y_test = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    else:
        source = load_source(DataConfig(source=name, source_path=data_path))
        train, test = source.splits == "train", source.splits == "test"
        x_train, y_train = to_float(source.images[train]), torch.as_tensor(source.labels[train])
        x_test, y_test = to_float(source.images[test]), torch.as_tensor(source.labels[test])
    rng = np.random.default_rng(seed)
    if train_size is not None and train_size < len(y_train):
        keep = torch.as_tensor(np.sort(rng.choice(len(y_train), train_size, replace=False)))
        x_train, y_train = x_train[keep], y_train[keep]
    if test_size is not None and test_size < len(y_test):
        keep = torch.as_tensor(np.sort(rng.choice(len(y_test), test_size, replace=False)))
        x_test, y_test = x_test[keep], y_test[keep]
    if pool > 1:
        x_train, x_test = F.avg_pool2d(x_train, pool), F.avg_pool2d(x_test, pool)
    if pad_rgb:
        x_train, x_test = pad_to_rgb32(x_train), pad_to_rgb32(x_test)
    return x_train.contiguous(), y_train, x_test.contiguous(), y_test


def with_data_overrides(params: Any, args: Any) -> Any:
    """params.yaml's parameters with a script's ``--source``/``--train-subset``/``--test-subset``/``--epochs``
    applied (the gate benchmarks' way to run the same protocol on another dataset or recipe)."""
    if args.source or args.train_subset or args.test_subset:
        params = replace(params, data=replace(params.data, source=args.source or params.data.source,
                                              train_subset=args.train_subset, test_subset=args.test_subset))
    if args.epochs:
        params = replace(params, train=replace(params.train, epochs=args.epochs))
    return params


def production_and_pool(source: Any, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``source`` of the samples production models train on, and of the reference pool: the training
    split divided by the pipeline's per-id hashed pool mask (unlearn.references.reference_pool_mask)."""
    from unlearn.references import reference_pool_mask

    train_ids = source.ids[source.splits == "train"]
    in_pool = reference_pool_mask(train_ids, params.verify.references.pool_fraction, params.seed)
    position = {sample_id: i for i, sample_id in enumerate(source.ids.tolist())}
    return (np.array([position[i] for i in train_ids[~in_pool]]),
            np.array([position[i] for i in train_ids[in_pool]]))


def subset(x: torch.Tensor, y: torch.Tensor, mask: np.ndarray) -> TensorSet:
    index = torch.as_tensor(np.flatnonzero(mask))
    return TensorSet(x[index], y[index])


def validation_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """The validation part a sweep carves from the training data: round(fraction * n) samples, drawn with ``seed``
    (``select_hparams.py``; ``amun_eps_init.py --train-size`` drops the same part). The same draw as
    :func:`forget_mask`, under the name of what it is for."""
    return forget_mask(n, fraction, seed)


def forget_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """A random forget subset of round(fraction * n) samples, drawn with its own seed."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=int(round(fraction * n)), replace=False)] = True
    return mask


@dataclass
class Reference:
    """What every evaluation of one (original, forget subset) pair shares."""

    forget: TensorSet
    retain: TensorSet
    evaluation: TensorSet  # test split (table) or validation split (sweep)
    data: UnlearningData
    original: torch.nn.Module
    retrains: list[dict[str, float]]  # metrics of each retrain
    retrain_seconds: float  # mean wall time of one retrain
    ref_forget: np.ndarray  # phi of the reference models on D_F (K, N_F, 1)
    ref_eval: np.ndarray  # phi of the reference models on the evaluation set (K, N_E, 1)

    @property
    def target(self) -> dict[str, float]:
        """Mean retrain metrics: the gap's target."""
        return {m: float(np.mean([r[m] for r in self.retrains])) for m in (*METRICS, "LiRA")}


def _phi(model, subset_: TensorSet, device: str) -> np.ndarray:
    return logit_scaled_confidence(predict_logits(model, subset_.images, device=device), subset_.labels)


def prepare(x_train, y_train, evaluation: TensorSet, *, model_name: str, recipe: SGDRecipe, device: str,
            fraction: float, original_seed: int, forget_seed: int, retrain_seeds: list[int],
            reference_seeds: list[int]) -> Reference:
    """Train the original, the retrains and the reference models of one (original, subset) pair."""
    n, classes = len(y_train), int(y_train.max()) + 1
    mask = forget_mask(n, fraction, forget_seed)
    forget, retain = subset(x_train, y_train, mask), subset(x_train, y_train, ~mask)
    factory: Callable[[], torch.nn.Module] = lambda: build_model(model_name, x_train.shape[1], classes)  # noqa: E731
    torch.manual_seed(original_seed)
    original = train_model(factory(), x_train, y_train, recipe, device=device, seed=original_seed)
    data = UnlearningData(forget, retain, classes, recipe, factory)
    refs_forget, refs_eval = [], []
    for k in range(0, len(reference_seeds), 2):  # complementary halves of D_R
        halves = np.random.default_rng(reference_seeds[k]).permutation(len(retain))
        for half, seed in zip((halves[: len(halves) // 2], halves[len(halves) // 2 :]),
                              reference_seeds[k : k + 2], strict=True):
            torch.manual_seed(seed)
            idx = torch.as_tensor(np.sort(half))
            model = train_model(factory(), retain.images[idx], retain.labels[idx], recipe, device=device, seed=seed)
            refs_forget.append(_phi(model, forget, device))
            refs_eval.append(_phi(model, evaluation, device))
    ref = Reference(forget, retain, evaluation, data, original, [], 0.0,
                    np.stack(refs_forget)[..., None], np.stack(refs_eval)[..., None])
    seconds = []
    for seed in retrain_seeds:
        wait_for(device)
        started = time.perf_counter()
        model = run_method("retrain", original, data, device=device, seed=seed)
        wait_for(device)
        seconds.append(time.perf_counter() - started)
        ref.retrains.append(evaluate(model, ref, device))
    ref.retrain_seconds = float(np.mean(seconds))
    return ref


def prepare_repetition(i: int, x_train, y_train, evaluation: TensorSet, args, recipe: SGDRecipe) -> Reference:
    """:func:`prepare` for repetition ``i`` of the table protocol: original seed 100+i, forget seed 200+i,
    retrain seeds 400+10i+j and reference seeds 500+10i+k (``args``: model, device, fraction, retrains,
    references, as benchmarks/methods.py's command line names them)."""
    return prepare(x_train, y_train, evaluation, model_name=args.model, recipe=recipe, device=args.device,
                   fraction=args.fraction, original_seed=100 + i, forget_seed=200 + i,
                   retrain_seeds=[400 + 10 * i + j for j in range(args.retrains)],
                   reference_seeds=[500 + 10 * i + k for k in range(args.references)])


def recalibrate_bn(args, params) -> bool:
    """``--recalibrate-bn`` / ``--no-recalibrate-bn`` if given, else params.yaml's ``unlearn.recalibrate_bn``."""
    flag = getattr(args, "recalibrate_bn", None)
    return params.unlearn.recalibrate_bn if flag is None else bool(flag)


def evaluate(model, ref: Reference, device: str) -> dict[str, float]:
    """UA/RA/TA in percent, RMIA and LiRA (offline) forget-vs-evaluation AUCs in percent."""
    out, diverged = {}, False
    logits = {}
    for key, part in (("UA", ref.forget), ("RA", ref.retain), ("TA", ref.evaluation)):
        logits[key] = predict_logits(model, part.images, device=device)
        diverged |= not bool(torch.isfinite(logits[key]).all())
        out[key] = 100.0 * (logits[key].argmax(1) == part.labels).float().mean().item()
    phi_f = np.nan_to_num(logit_scaled_confidence(logits["UA"], ref.forget.labels), nan=-1e6)
    phi_e = np.nan_to_num(logit_scaled_confidence(logits["TA"], ref.evaluation.labels), nan=-1e6)
    refs = ReferenceSignals(
        target_forget=phi_f[:, None], target_test=phi_e[:, None], forget=ref.ref_forget, test=ref.ref_eval,
        forget_in=np.zeros(ref.ref_forget.shape[:2], dtype=bool), test_in=np.zeros(ref.ref_eval.shape[:2], dtype=bool))
    inputs = AttackInput(
        forget=compute_signals(logits["UA"], ref.forget.labels),
        retain=compute_signals(logits["RA"], ref.retain.labels),
        test=compute_signals(logits["TA"], ref.evaluation.labels), references=refs)
    for key, attack, options in (("MIA", "rmia_offline", {"a": 0.3, "gamma": 1.0}), ("LiRA", "lira_offline", {})):
        result = run_attack(attack, inputs, **options)
        out[key] = 100.0 * roc_auc(result.member_scores, result.nonmember_scores)
    out["diverged"] = float(diverged)
    return out


def untouched(ref: Reference, device: str, recalibrate_bn: bool) -> torch.nn.Module:
    """The "doing nothing" baseline a method is compared with: the original, with its batch-norm statistics
    recomputed on D_R when every method's are (``recalibrate_bn``). Compared with the original as trained, a
    method's score partly measured the recalibration (review of 2026-12-07)."""
    import copy

    from unlearn.training import recalibrate_batchnorm

    model = copy.deepcopy(ref.original)
    if recalibrate_bn:
        recalibrate_batchnorm(model, ref.retain.images, device=device)
    return model.eval()


def gap(row: dict[str, float], target: dict[str, float]) -> float:
    """Avg Gap: mean over UA, RA, TA, MIA of |row - target| (points)."""
    return float(np.mean([abs(row[m] - target[m]) for m in METRICS]))


def weight_change(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """||theta_after - theta_before|| / ||theta_before|| over all parameters (0: returned unchanged)."""
    a = torch.cat([p.detach().flatten().double().cpu() for p in before.parameters()])
    b = torch.cat([p.detach().flatten().double().cpu() for p in after.parameters()])
    return float((b - a).norm() / a.norm().clamp_min(1e-12))


def run_one(name: str, ref: Reference, kwargs: dict, *, device: str, seed: int, recalibrate_bn: bool = False) -> dict:
    """Run one method on one prepared pair and evaluate it (metrics, gap, time ratio, Δw, info).

    ``recalibrate_bn``: as params.yaml's ``unlearn.recalibrate_bn`` (batch-norm statistics recomputed on D_R
    after the method, inside the timed window).
    """
    wait_for(device)
    started = time.perf_counter()
    model = run_method(name, ref.original, ref.data, device=device, seed=seed, kwargs=kwargs,
                       recalibrate_bn=recalibrate_bn)
    wait_for(device)
    seconds = time.perf_counter() - started
    row = evaluate(model, ref, device)
    row.update(gap=gap(row, ref.target), seconds=seconds, time_ratio=seconds / ref.retrain_seconds,
               weight_change=weight_change(ref.original, model))
    info = {k: v for k, v in method_info(model).items() if isinstance(v, int | float | bool) or v is None}
    if info:
        row["info"] = info
    return row


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the two-sided Student-t confidence interval); half-width nan for n < 2."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), math.nan
    half = stats.t.ppf(0.5 + level / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean()), float(half)


def paired_difference(values: list[float], baseline: list[float], level: float = 0.95) -> dict:
    """Compare two rows repetition by repetition (same original, forget subset and retrains).

    The table's intervals are per row, so two rows whose intervals overlap may still differ
    consistently: the repetition-to-repetition spread (which original, which subset) moves both.
    Pairing removes it. Returns the mean difference ``values - baseline`` with its Student-t
    half-width, how many repetitions the baseline was lower in, the paired Student-t p-value
    (assumes roughly normal differences) and the exact two-sided sign-flip permutation p-value (no
    such assumption, but over all 2^n sign patterns its smallest possible value is 2 / 2^(n - ties),
    so 5 repetitions can never reach 0.05 with it, which the report states). Repetitions where either
    row is missing (nan: a method raised) are dropped.
    """
    from scipy import stats

    diffs = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    diffs = diffs[~np.isnan(diffs)]
    n = len(diffs)
    mean, half = t_interval(list(diffs), level) if n else (math.nan, math.nan)
    if n == 0:
        p_value = math.nan
    elif n > 16:
        raise ValueError(f"paired_difference: exact sign-flip test over {n} repetitions (2^{n} patterns) is too many")
    else:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # every +-1 pattern
        flipped = np.abs((signs * diffs).mean(axis=1))
        p_value = float(np.mean(flipped >= abs(diffs.mean()) - 1e-12))
    if n < 2:
        p_t = math.nan
    elif np.std(diffs) > 1e-9 * max(1.0, float(np.abs(diffs).max())):  # not float noise around a constant
        p_t = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    else:  # every difference the same: t is infinite (p 0) unless they are all zero (nothing to test)
        p_t = 0.0 if diffs[0] != 0 else math.nan
    ties = int(np.sum(diffs == 0))
    # A zero difference flips to itself, so only 2^(n - ties) distinct patterns: the floor rises with ties.
    floor = 2.0 / 2 ** (n - ties) if n > ties else 1.0 if n else math.nan
    return {"mean": mean, "ci95": half, "n": n, "baseline_lower": int(np.sum(diffs > 0)), "p_t": p_t,
            "ties": ties, "p_sign_flip": p_value, "p_floor": floor}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (nan entries are left out and stay nan)."""
    finite = sorted(((p, k) for k, p in p_values.items() if not math.isnan(p)))
    adjusted: dict[str, float] = {k: math.nan for k in p_values}
    running = 0.0
    for rank, (p, key) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[key] = running
    return adjusted
