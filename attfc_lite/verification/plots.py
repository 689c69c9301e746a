"""Plots of verification results: ROC curves with their TAR@FAR points, and accuracy by pair quality (lesson 01)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

_FAR_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_roc(results_or_list: dict | Sequence[dict], labels: str | Sequence[str] | None = None, ax: Any = None,
             title: str | None = None) -> Any:
    """ROC curves (TAR against FAR on a log axis) of one or several results.

    Each result is a dict from `evaluate_verification` (it needs 'roc'); its TAR@FAR values
    are marked on the curve at the FAR where they were read ('far_achieved'), one marker shape
    per target FAR, each shape with its own legend entry. The FAR axis starts a decade below the
    smallest target or achieved FAR, so no operating point sits on the edge; the TAR axis spans
    0 to 1. Returns the matplotlib Axes; never calls plt.show().
    """
    import matplotlib.pyplot as plt

    results = [results_or_list] if isinstance(results_or_list, dict) else list(results_or_list)
    if not results:
        raise ValueError("results_or_list is empty; pass a result dict or a list of them")
    if labels is None:
        names: list[str | None] = [None] * len(results)
    else:
        names = [labels] if isinstance(labels, str) else list(labels)
        if len(names) != len(results):
            raise ValueError(f"labels must have one entry per result: {len(names)} labels for {len(results)} results")
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "roc" not in res:
            raise ValueError(f"result {i} has no 'roc' entry; pass dicts returned by evaluate_verification")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.2))

    far_keys = list(dict.fromkeys(k for res in results for k in res.get("tar_at_far", {})))
    marker_of = {k: _FAR_MARKERS[i % len(_FAR_MARKERS)] for i, k in enumerate(far_keys)}
    smallest = [float(k) for res in results for k, v in res.get("tar_at_far", {}).items() if v is not None]
    marked = set()
    for i, (res, name) in enumerate(zip(results, names)):
        fpr = np.asarray(res["roc"]["fpr"], dtype=float)
        tpr = np.asarray(res["roc"]["tpr"], dtype=float)
        label = name if name is not None else f"result {i}"
        if res.get("auc") is not None:
            label += f" (AUC {res['auc']:.4f})"
        shown = fpr > 0  # FPR 0 has no place on a log axis
        (line,) = ax.plot(fpr[shown], tpr[shown], label=label)
        achieved = res.get("far_achieved", {})
        for key, tar in res.get("tar_at_far", {}).items():
            x = achieved.get(key, float(key))
            if tar is None or not x:  # FAR 0 (no impostor accepted) has no place on a log axis either
                continue
            ax.plot([x], [tar], linestyle="none", marker=marker_of[key], color=line.get_color(), markersize=6,
                    markeredgecolor="black", markeredgewidth=0.6)
            smallest.append(x)
            marked.add(key)
    for key in far_keys:  # one legend entry per marker shape, in a neutral colour
        if key in marked:
            ax.plot([], [], linestyle="none", marker=marker_of[key], color="white", markeredgecolor="black",
                    label=f"TAR at FAR \u2264 {key}")
    left = 10.0 ** math.floor(math.log10(min(smallest) / 1.5)) if smallest else 1e-4
    chance = np.logspace(math.log10(left), 0, 50)
    ax.plot(chance, chance, linestyle="--", color="grey", linewidth=0.8, label="chance (TAR = FAR)")
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR: fraction of impostor pairs accepted (log scale)")
    ax.set_ylabel("TAR: fraction of genuine pairs accepted")
    if title is None:
        every = all("num_impostor_all" in res for res in results)
        title = "ROC, all pairs of the evaluation set" if every else "ROC of the verification pairs"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")  # "best" keeps clear of the curves and the markers
    return ax


def plot_quality_split(results: dict, ax: Any = None, title: str | None = None) -> Any:
    """10-fold accuracy of all pairs and of the high- and low-quality halves, with the spread over
    the folds as error bars (the ± that `verification_summary` prints)."""
    import matplotlib.pyplot as plt

    groups = results.get("by_quality")
    if not groups or "high" not in groups or "low" not in groups:
        raise ValueError("results has no 'by_quality' split: evaluate_verification adds it when it is given "
                         "the images' quality")
    ax = ax or plt.subplots(figsize=(5, 3.4))[1]
    names = ["all pairs", "high quality", "low quality"]
    rows = [results, groups["high"], groups["low"]]
    means = [r["accuracy_mean"] for r in rows]
    stds = [r["accuracy_std"] for r in rows]
    ax.bar(names, means, yerr=stds, capsize=5, color=["C0", "C2", "C3"], label="mean over the 10 folds")
    for i, (mean, std) in enumerate(zip(means, stds)):
        ax.text(i, mean + std + 0.01, f"{mean:.3f}", ha="center", fontsize=9)
    # 0.5 is chance for balanced pairs: the axis starts there rather than at 0 so that the
    # differences stay readable; the title says so.
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("10-fold verification accuracy")
    ax.set_title(title or "accuracy by pair quality (axis from chance, 0.5)", fontsize=10)
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="k", capsize=5, label="± std over the folds")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    return ax
