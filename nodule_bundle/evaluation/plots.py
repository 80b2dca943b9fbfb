"""Evaluation figures as PNG files, written atomically: FROC, ROC, reliability diagram, size-band
confusion matrix, Bland-Altman. Each takes plain numbers (computed elsewhere) and draws them with
matplotlib's object API (no global pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nodule_bundle.core.io_utils import atomic_path
from nodule_bundle.core.nodule import SIZE_BAND_NAMES


def _save(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # ties move together
    tp, fp = np.cumsum(labels)[last_of_each], np.cumsum(1 - labels)[last_of_each]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def plot_froc(result: Mapping, path: str | Path, title: str = "FROC") -> None:
    """FROC curves (log FP-per-scan axis, the CPM operating points marked)."""
    fig = Figure(figsize=(6, 4.5), dpi=100)
    ax = fig.subplots()
    for name, curve in result["curves"].items():
        (line,) = ax.plot(curve["fp_per_scan_curve"], curve["sensitivity_curve"], label=f"{name} (CPM {curve['cpm']:.3f})")
        rates = [float(r) for r in curve["sensitivity_at_fp_per_scan"]]
        ax.plot(rates, list(curve["sensitivity_at_fp_per_scan"].values()), "o", ms=4, color=line.get_color())
    ax.set(xscale="log", xlim=(0.1, 16), ylim=(0, 1.02), xlabel="false positives per scan", ylabel="sensitivity", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | Path, title: str) -> None:
    """ROC curves ``{name: (fpr, tpr, auc)}`` on one pair of axes, with the chance diagonal."""
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    for name, (fpr, tpr, auc) in curves.items():
        ax.step(fpr, tpr, where="post", label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (1 - specificity)", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_reliability(bins: Mapping[str, Mapping], path: str | Path, title: str) -> None:
    """Reliability diagrams ``{name (with its ECE): reliability bins}``: observed frequency against
    mean predicted probability per bin (marker size by count), the diagonal being perfect calibration."""
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, b in bins.items():
        p, y, n = (np.asarray(b[k], dtype=np.float64) for k in ("mean_probability", "observed_frequency", "count"))
        keep = n > 0
        ax.plot(p[keep], y[keep], "-o", label=name)
        for x, f, c in zip(p[keep], y[keep], n[keep]):
            ax.annotate(str(int(c)), (x, f), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(malignant)", ylabel="observed fraction malignant", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], path: str | Path, title: str) -> None:
    """The Lung-RADS size-band confusion matrix (rows: reference band, columns: predicted band)."""
    m = np.asarray(matrix)
    fig = Figure(figsize=(5, 4.5), dpi=100)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    for (i, j), count in np.ndenumerate(m):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > m.max() / 2 else "black")
    ticks = range(len(SIZE_BAND_NAMES))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=SIZE_BAND_NAMES, yticklabels=SIZE_BAND_NAMES)
    ax.set(xlabel="predicted size band", ylabel="reference size band", title=title)
    _save(fig, path)


def plot_bland_altman(reference_mm: Sequence[float], predicted_mm: Sequence[float], path: str | Path, title: str) -> dict:
    """Bland-Altman plot of predicted against reference diameters; returns the bias and 95 % limits."""
    ref, pred = np.asarray(reference_mm, dtype=np.float64), np.asarray(predicted_mm, dtype=np.float64)
    mean, diff = (ref + pred) / 2.0, pred - ref
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    limits = (bias - 1.96 * sd, bias + 1.96 * sd)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    ax = fig.subplots()
    ax.scatter(mean, diff, s=10, alpha=0.6)
    ax.axhline(bias, color="C1", label=f"bias {bias:+.2f} mm")
    for limit in limits:
        ax.axhline(limit, color="C1", ls="--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="mean of reference and predicted diameter (mm)", ylabel="predicted - reference (mm)",
           title=f"{title}\n95 % limits of agreement {limits[0]:+.2f} to {limits[1]:+.2f} mm")  # fmt: skip
    ax.legend(loc="upper right")
    _save(fig, path)
    return {"bias_mm": bias, "limits_of_agreement_mm": [float(limits[0]), float(limits[1])], "n": int(len(diff))}
