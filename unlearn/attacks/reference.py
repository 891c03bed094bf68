"""Attacks that calibrate every sample against reference models: LiRA and offline RMIA.

Both read :class:`~unlearn.attacks.base.ReferenceSignals`: phi = log(p_y / (1 - p_y)) of the
target and of K reference models, with a trailing augmentation axis A, and the masks saying
which reference trained on which sample. Forget samples (positives) and test samples
(negatives) are scored the same way, each against its own reference observations.

* LiRA -- Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference Attacks From First
  Principles", IEEE S&P 2022 (arXiv 2112.03570), as implemented in tensorflow/privacy
  ``research/mi_lira_2021``: Gaussians fitted per sample to phi under IN and OUT references.
* RMIA -- Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference Attacks",
  ICML 2024 (arXiv 2312.03262), offline variant as in ML Privacy Meter's library path.

See shared/research/mia-and-peers.md sections 4.1-4.3 for the provenance of every default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from unlearn.attacks.base import AttackInput, AttackRefused, AttackResult, ReferenceSignals, register_attack

STD_FLOOR = 1e-3
"""Smallest standard deviation (in phi units) any fitted Gaussian may have.

phi is a log-odds; spreads below 1e-3 mean the models agree on p_y to 0.1 % relative, which
only happens for saturated samples. Without a floor a zero spread gives infinite scores; with
it |z| <= |delta phi| * 1e3, so log-densities stay finite and averaging over augmentations is
not swamped by one saturated view.
"""

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_RMIA_BLOCK_ELEMENTS = 1 << 22  # pairwise comparisons held in memory at once (about 4M)


@dataclass(frozen=True)
class GaussianFit:
    """Per-sample Gaussians fitted to phi observations of one hypothesis.

    Attributes:
        centre: Median of each sample's observations, shape (N, A).
        scale: Standard deviation used for each sample, floored at :data:`STD_FLOOR`, shape (N, A).
        pooled_std: Pooled within-sample standard deviation (see :func:`fit_gaussians`); NaN
            when no sample has two observations.
    """

    centre: np.ndarray
    scale: np.ndarray
    pooled_std: float


def require_observations(mask: np.ndarray, hypothesis: str, sample_set: str) -> None:
    """Raise unless every sample has at least one observation of ``hypothesis``.

    Args:
        mask: True where a model observed the sample under the hypothesis, shape (M, N).
        hypothesis: Name used in the message ("OUT", "IN", "H_u (unlearned)").
        sample_set: Which samples the columns are ("forget", "test").

    Raises:
        ValueError: Naming the hypothesis, the set and the first offending samples.
    """
    missing = np.flatnonzero(mask.sum(axis=0) == 0)
    if len(missing):
        raise ValueError(
            f"no {hypothesis} observations for {len(missing)} {sample_set} sample(s) "
            f"(first indices: {missing[:5].tolist()}); every sample needs at least one model under {hypothesis}"
        )


def fit_gaussians(
    values: np.ndarray, mask: np.ndarray, *, hypothesis: str, per_example: bool, min_observations: int = 2,
) -> GaussianFit:
    """Fit one Gaussian per sample and augmentation to masked observations (LiRA's estimator).

    The centre is the MEDIAN of the observations and the per-example spread is their standard
    deviation with ddof=0 (``np.median`` / ``np.std`` in mi_lira_2021 ``plot.py``).

    The global spread is the pooled within-sample standard deviation,
    ``sqrt(sum_i sum_k (phi_ik - mean_i)^2 / sum_i (n_i - 1))`` over samples and augmentations
    with n_i >= 2 observations. It measures spread around each sample's own centre; the
    reference code's ``np.std`` of all observations is uncentred and adds the between-sample
    variance of the centres, which is unrelated to how one sample varies across models. The
    n_i - 1 weights keep it unbiased when many samples have few observations, which is exactly
    when it is used as the fallback.

    Args:
        values: phi of each model on each sample, shape (M, N, A).
        mask: True where ``values`` is an observation of this hypothesis, shape (M, N).
        hypothesis: Name of the hypothesis, for error messages.
        per_example: Use each sample's own spread (else the pooled one for every sample).
        min_observations: Samples with fewer observations use the pooled spread.

    Returns:
        The fit; scales are floored at :data:`STD_FLOOR`.

    Raises:
        ValueError: If a sample has no observation, or the pooled spread is needed but no
            sample has two observations.
    """
    if min_observations < 2:
        raise ValueError(f"min_observations must be >= 2 (a spread needs two observations), got {min_observations}")
    require_observations(mask, hypothesis, "audited")
    counts = mask.sum(axis=0)  # (N,)
    masked = np.where(mask[..., None], values, np.nan)  # (M, N, A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(masked, axis=0)  # (N, A)
        squares = np.nansum((masked - np.nanmean(masked, axis=0)) ** 2, axis=0)  # (N, A)
    pooled_dof = float(np.sum(np.maximum(counts - 1, 0))) * values.shape[2]
    pooled = math.sqrt(float(squares[counts >= 2].sum()) / pooled_dof) if pooled_dof > 0 else math.nan
    own = counts >= min_observations if per_example else np.zeros_like(counts, dtype=bool)  # (N,)
    if not own.all() and math.isnan(pooled):
        raise ValueError(
            f"a global {hypothesis} standard deviation is needed but no sample has two {hypothesis} observations"
        )
    scale = np.where(own[:, None], np.sqrt(squares / np.maximum(counts, 1)[:, None]), pooled)  # (N, A)
    return GaussianFit(centre, np.maximum(scale, STD_FLOOR), pooled)


def log_normal_density(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log N(x; mean, std^2), elementwise with broadcasting."""
    z = (x - mean) / std
    return -0.5 * z * z - np.log(std) - _LOG_SQRT_2PI


def _stacked(refs: ReferenceSignals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forget then test samples along one axis: target (N, A), references (K, N, A), IN mask (K, N)."""
    if refs.target_forget.shape != refs.forget.shape[1:] or refs.target_test.shape != refs.test.shape[1:]:
        raise ValueError("ReferenceSignals: target and reference arrays disagree on samples or augmentations")
    target = np.concatenate([refs.target_forget, refs.target_test], axis=0).astype(np.float64)
    values = np.concatenate([refs.forget, refs.test], axis=1).astype(np.float64)
    is_in = np.concatenate([refs.forget_in, refs.test_in], axis=1).astype(bool)
    return target, values, is_in


def _with_out_references(inputs: AttackInput, attack: str) -> tuple[ReferenceSignals, np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """The reference signals stacked (see ``_stacked``), refusing samples no reference model left OUT."""
    refs = inputs.references
    if refs is None:
        raise ValueError(f"{attack} needs reference-model signals")
    target, values, is_in = _stacked(refs)
    require_observations(~refs.forget_in.astype(bool), "OUT", "forget")
    require_observations(~refs.test_in.astype(bool), "OUT", "test")
    return refs, target, values, is_in


def _lira(inputs: AttackInput, *, online: bool, per_example: bool, min_observations: int = 2) -> AttackResult:
    refs, target, values, is_in = _with_out_references(inputs, "LiRA")
    out = fit_gaussians(values, ~is_in, hypothesis="OUT", per_example=per_example, min_observations=min_observations)
    extra = {}
    if online:
        require_observations(refs.forget_in.astype(bool), "IN", "forget")
        require_observations(refs.test_in.astype(bool), "IN", "test")
        inn = fit_gaussians(values, is_in, hypothesis="IN", per_example=per_example, min_observations=min_observations)
        # Carlini et al., Algorithm 1: Lambda = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2).
        per_view = log_normal_density(target, inn.centre, inn.scale) - log_normal_density(target, out.centre, out.scale)
        if not math.isnan(inn.pooled_std):
            extra["global_std_in"] = inn.pooled_std
    else:
        # One-sided offline test (the paper): log Pr[Z <= phi], Z ~ N(mu_out, s_out^2). Unlike the
        # reference code's two-sided -log N(phi; mu_out, s_out^2), a sample far BELOW the OUT
        # distribution is not called a member: training only ever raises confidence.
        per_view = log_ndtr((target - out.centre) / out.scale)  # (N, A)
    if not math.isnan(out.pooled_std):
        extra["global_std_out"] = out.pooled_std
    scores = per_view.mean(axis=1)  # average the per-augmentation statistics, as mi_lira_2021 does
    n_forget = len(refs.target_forget)
    return AttackResult(scores[:n_forget], scores[n_forget:], extra)


@register_attack("lira_offline", requires=("references",))
def lira_offline(inputs: AttackInput, *, min_observations: int = 2) -> AttackResult:
    """Offline LiRA with per-example variance (Carlini et al. 2022, Algorithm 1, offline variant).

    Per sample and augmentation, mu_out = median and s_out = std (ddof 0) of phi over the
    references that did not train on it. Score = mean over augmentations of
    ``log Phi((phi_target - mu_out) / s_out)`` (``scipy.special.log_ndtr``), the paper's
    ONE-SIDED test: higher confidence than the OUT models means member, lower does not. This
    is a deliberate departure from mi_lira_2021 ``generate_ours_offline``, which ranks by the
    two-sided negative log-density and so calls very unconfident samples members too.

    Args:
        inputs: Attack inputs with ``references``.
        min_observations: Samples with fewer OUT observations use the global (pooled) std.

    Returns:
        Scores for D_F and D_T; ``extra["global_std_out"]`` is the pooled OUT std when defined.

    Raises:
        ValueError: If a sample has no OUT reference.
    """
    return _lira(inputs, online=False, per_example=True, min_observations=min_observations)


@register_attack("lira_offline_global", requires=("references",))
def lira_offline_global(inputs: AttackInput) -> AttackResult:
    """Offline LiRA with one global variance (Carlini et al. 2022, "fixed variance").

    As :func:`lira_offline`, but every sample uses the same s_out: the pooled within-sample
    std of OUT observations around each sample's own mean, over all audited samples and
    augmentations (see :func:`fit_gaussians`). Recommended with few references (< 64).

    Args:
        inputs: Attack inputs with ``references``.

    Returns:
        Scores for D_F and D_T; ``extra["global_std_out"]`` is the std used.

    Raises:
        ValueError: If a sample has no OUT reference, or no sample has two.
    """
    return _lira(inputs, online=False, per_example=False)


@register_attack("lira_online", requires=("references", "in_references"))
def lira_online(inputs: AttackInput, *, min_observations: int = 2) -> AttackResult:
    """Online LiRA with per-example variances (Carlini et al. 2022, Algorithm 1).

    Per sample and augmentation, Gaussians (median, std with ddof 0) are fitted to phi of the
    IN and the OUT references; score = mean over augmentations of
    ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``.

    Args:
        inputs: Attack inputs with ``references`` that include IN models for every sample.
        min_observations: Samples with fewer observations of a hypothesis use that
            hypothesis' global (pooled) std.

    Returns:
        Scores for D_F and D_T; ``extra`` holds the pooled IN and OUT stds when defined.

    Raises:
        ValueError: If a sample has no IN or no OUT reference (the message names which).
    """
    return _lira(inputs, online=True, per_example=True, min_observations=min_observations)


@register_attack("lira_online_global", requires=("references", "in_references"))
def lira_online_global(inputs: AttackInput) -> AttackResult:
    """Online LiRA with global variances (Carlini et al. 2022, "fixed variance").

    As :func:`lira_online`, with one s_in and one s_out shared by all samples: the pooled
    within-sample stds of the IN and of the OUT observations (see :func:`fit_gaussians`).
    mi_lira_2021 instead uses the uncentred std of all IN values for both.

    Args:
        inputs: Attack inputs with ``references`` that include IN models for every sample.

    Returns:
        Scores for D_F and D_T; ``extra["global_std_in"]`` and ``extra["global_std_out"]``.

    Raises:
        ValueError: If a sample has no IN or no OUT reference, or no sample has two of either.
    """
    return _lira(inputs, online=True, per_example=False)


def _rmia_log_ratio(target: np.ndarray, values: np.ndarray, is_in: np.ndarray, a: float) -> np.ndarray:
    """log(Pr(x|theta) / Pr(x)) per sample and augmentation, shape (N, A), offline Pr(x)."""
    out = ~is_in  # (K, N)
    probs = np.exp(-np.logaddexp(0.0, -values))  # sigmoid(phi): p_y of each reference, (K, N, A)
    mean_out = (probs * out[..., None]).sum(axis=0) / out.sum(axis=0)[:, None]  # (N, A)
    # Zarifzadeh et al. offline approximation: Pr_IN ~ a Pr_OUT + (1 - a), Pr(x) = (Pr_IN + Pr_OUT) / 2.
    prior = 0.5 * ((1.0 + a) * mean_out + (1.0 - a))
    log_target = -np.logaddexp(0.0, -target)  # log sigmoid(phi), exact for any phi
    return log_target - np.log(np.maximum(prior, np.finfo(np.float64).tiny))


def rmia_population_split(n_test: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split D_T into RMIA's population z-set and the scored negatives (disjoint), seeded.

    Why: every scored sample -- forget positive or test negative -- must be ranked against the
    SAME population with the SAME denominator. Comparing test samples with "the other test
    samples" (N_T - 1 points) and forget samples with all N_T points makes the denominator
    differ by one, and with gamma > 1 almost all counts tie at small integers, so that
    difference alone decides the ranking (issue #12 measured AUC 0.007-0.18 on every model,
    retrains included). ML Privacy Meter likewise keeps its population apart from the audited
    points.

    Args:
        n_test: |D_T|.
        fraction: Share of D_T used as the population, in (0, 1); floor(n_test * fraction) points.
        seed: Seed of the permutation (the attack's ``inputs.seed``, so every model scored with the
            same seed uses the same split and the gate's paired bootstrap stays paired).

    Returns:
        (population indices, negative indices), each sorted ascending.

    Raises:
        AttackRefused: If either part would be empty.
    """
    n_population = int(n_test * fraction)
    if n_population < 1 or n_test - n_population < 1:
        raise AttackRefused(
            f"rmia_offline needs at least one population and one negative test sample; {n_test} test sample(s) "
            f"with population_fraction {fraction} gives {n_population} and {n_test - n_population}")
    order = np.random.default_rng(seed).permutation(n_test)
    return np.sort(order[:n_population]), np.sort(order[n_population:])


@register_attack("rmia_offline", requires=("references",))
def rmia_offline(
    inputs: AttackInput, *, a: float = 0.3, gamma: float = 1.0, population_fraction: float = 0.5,
    chunk_size: int | None = None,
) -> AttackResult:
    """Offline RMIA (Zarifzadeh et al., ICML 2024: LR_theta(x, z) and Score_MIA; ML Privacy Meter ``attacks.py``).

    Pr(x|theta) = p_y = sigmoid(phi) of the target; Pr(x) = ((1 + a) mean_OUT(x) + (1 - a)) / 2
    with mean_OUT the mean p_y of the references that did NOT train on x (IN references are
    ignored). ratio(x) = Pr(x|theta) / Pr(x), and

        score(x) = fraction of population points z with ratio(x) / ratio(z) >= gamma,

    decided in log space. The population Z is a seeded part of D_T (see
    :func:`rmia_population_split`); the remaining test samples are the negatives. Forget and
    negative samples are both compared with all of Z, so every score has the same denominator
    |Z| and no sample is ever compared with itself. With A > 1 augmentations each (x, z) pair
    counts when a strict majority of the per-augmentation decisions holds (the research code's
    ``torch.mode`` vote; a tie is a no). The |X| x |Z| comparison runs in row blocks.

    Args:
        inputs: Attack inputs with ``references``.
        a: Offline interpolation Pr_IN ~ a Pr_OUT + (1 - a), in [0, 1] (research default 0.3;
            the library tunes it per target).
        gamma: Likelihood-ratio threshold, > 0 (library 1.0, research configs 2.0).
        population_fraction: Share of D_T used as the population z-set, in (0, 1).
        chunk_size: Rows x per block; None picks blocks of about 4M comparisons.

    Returns:
        Scores in [0, 1] for D_F and for the negative part of D_T (in D_T order).

    Raises:
        ValueError: On invalid options or a sample without OUT references.
        AttackRefused: If D_T is too small to hold a population and a negative.
    """
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"rmia_offline: a must be in [0, 1], got {a}")
    if not gamma > 0.0:
        raise ValueError(f"rmia_offline: gamma must be > 0, got {gamma}")
    if not 0.0 < population_fraction < 1.0:
        raise ValueError(f"rmia_offline: population_fraction must be in (0, 1), got {population_fraction}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"rmia_offline: chunk_size must be >= 1, got {chunk_size}")
    refs, target, values, is_in = _with_out_references(inputs, "RMIA")
    n_forget, n_test = len(refs.target_forget), len(refs.target_test)
    population, negatives = rmia_population_split(n_test, population_fraction, inputs.seed)
    ratio_all = _rmia_log_ratio(target, values, is_in, a)  # (N_F + N_T, A), log ratio(x)
    ratio_z = ratio_all[n_forget + population]  # (N_Z, A)
    ratio_x = np.concatenate([ratio_all[:n_forget], ratio_all[n_forget + negatives]])  # scored samples
    n_x, views = ratio_x.shape
    log_gamma = math.log(gamma)
    rows = int(chunk_size) if chunk_size is not None else max(1, _RMIA_BLOCK_ELEMENTS // (len(population) * views))
    wins = np.empty(n_x, dtype=np.int64)
    for start in range(0, n_x, rows):
        stop = min(start + rows, n_x)
        if views == 1:
            beats = ratio_x[start:stop, 0, None] - ratio_z[None, :, 0] >= log_gamma  # (c, N_Z)
        else:
            votes = (ratio_x[start:stop, None, :] - ratio_z[None, :, :] >= log_gamma).sum(axis=2)  # (c, N_Z)
            beats = 2 * votes > views
        wins[start:stop] = beats.sum(axis=1)
    scores = wins / len(population)  # ONE denominator for positives and negatives
    return AttackResult(scores[:n_forget], scores[n_forget:], {"population_size": float(len(population))})
