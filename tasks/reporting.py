"""Verification plots: ROC curves on log-log axes and signal histograms.

Each plot is written twice: a PNG (logged to MLflow and declared as a DVC image plot) and
the data behind it as CSV (declared as a DVC data plot, so ``dvc plots diff`` compares runs).
Only aggregate curves and histogram counts are written, never per-sample values keyed by id.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from unlearn.files import atomic_path

ROLES = ("original", "unlearned", "retrain")
COLOURS = {"original": "tab:red", "unlearned": "tab:blue", "retrain": "tab:green"}
HISTOGRAM_BINS = 40


def _atomic_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# Margins in inches around a row of panels: room for the tick labels and axis labels on the left and at the
# bottom, the suptitle on top, and the y-axis label between panels.
MARGINS = {"left": 0.75, "right": 0.15, "bottom": 0.55, "top": 0.65, "between": 0.75}


def _save_figure(figure: Any, path: Path) -> None:
    # Fixed margins, not a layout engine: the tight layout measured every tick label to place the panels,
    # half of the drawing time that every deletion run pays, to find the same margins for these fixed
    # layouts (one row of panels, labels of known length).
    width, height = figure.get_size_inches()
    n = len(figure.axes)
    panel = (width - MARGINS["left"] - MARGINS["right"] - (n - 1) * MARGINS["between"]) / n  # one panel's width
    figure.subplots_adjust(left=MARGINS["left"] / width, right=1 - MARGINS["right"] / width,
                           bottom=MARGINS["bottom"] / height, top=1 - MARGINS["top"] / height,
                           wspace=MARGINS["between"] / panel)  # matplotlib's wspace: a share of one panel's width
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def verification_plots(out_dir: Path, scores: dict[str, dict[str, dict[str, np.ndarray]]],
                       evidence: dict[str, Any]) -> list[Path]:
    """Write the ROC and histogram plots of one verification.

    Args:
        out_dir: Directory for the files (created).
        scores: role -> attack -> {"member": (N_F,), "nonmember": (N_T,)}; roles among
            original, unlearned, retrain.
        evidence: role -> :class:`unlearn.verification.ModelEvidence` (loss signals).

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    attacks = sorted({a for per_role in scores.values() for a, s in per_role.items() if len(s["nonmember"])})
    rows = []
    if attacks:
        from sklearn.metrics import roc_curve  # only when plotting: keeps task start-up light

        figure, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 4), squeeze=False)
        for ax, attack in zip(axes[0], attacks, strict=True):
            for role in ROLES:
                if attack not in scores.get(role, {}):
                    continue
                member, nonmember = scores[role][attack]["member"], scores[role][attack]["nonmember"]
                labels = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
                fpr, tpr, _ = roc_curve(labels, np.concatenate([member, nonmember]))
                rows += [[attack, role, float(f), float(t)] for f, t in zip(fpr, tpr, strict=True)]
                # log-log axes: the low-FPR regime is where membership inference matters
                floor = 1.0 / max(len(nonmember), 1)
                ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), color=COLOURS[role], label=role)
            ax.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle=":", linewidth=1)
            ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), title=attack,
                   xlabel="false-positive rate (test)", ylabel="true-positive rate (forget)")
            ax.minorticks_off()  # decades are enough to read; minor log ticks cost more than the curves
            ax.legend(loc="lower right", fontsize=8)
        figure.suptitle("Forget vs test ROC (log-log)")
        _save_figure(figure, out_dir / "roc.png")
        plt.close(figure)
        _atomic_csv(out_dir / "roc.csv", ["attack", "model", "fpr", "tpr"], rows)
        written += [out_dir / "roc.png", out_dir / "roc.csv"]
    roles = [r for r in ROLES if r in evidence]
    losses = {r: {s: getattr(evidence[r], s).loss for s in ("forget", "retain", "test")
                  if getattr(evidence[r], s) is not None} for r in roles}
    top = max((float(np.quantile(v, 0.99)) for per in losses.values() for v in per.values() if len(v)), default=1.0)
    edges = np.linspace(0.0, max(top, 1e-3), HISTOGRAM_BINS + 1)
    figure, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 3.6), squeeze=False, sharey=True)
    hist_rows = []
    for ax, role in zip(axes[0], roles, strict=True):
        for subset, values in losses[role].items():
            counts, _ = np.histogram(np.clip(values, 0.0, edges[-1]), bins=edges)
            density = counts / max(len(values), 1)
            hist_rows += [[role, subset, float(lo), float(d)] for lo, d in zip(edges[:-1], density, strict=True)]
            ax.stairs(density, edges, label=f"{subset} (n={len(values)})")
        ax.set(title=role, xlabel="cross-entropy loss", ylabel="share of samples")
        ax.legend(fontsize=8)
    figure.suptitle("Loss on forget, retain and test sets")
    _save_figure(figure, out_dir / "loss_histograms.png")
    plt.close(figure)
    _atomic_csv(out_dir / "loss_histograms.csv", ["model", "set", "loss", "share"], hist_rows)
    written += [out_dir / "loss_histograms.png", out_dir / "loss_histograms.csv"]
    return written
