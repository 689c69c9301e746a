"""Plots of the memory model and of a measured step."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .measure import StepMeasurement
from .model import DATASETS, DEVICE_CAPACITIES_GIB, GiB, MemoryBreakdown, _unit_scale, dtype_name, predict_memory

# --------------------------------------------------------------------------- plots

_TERM_COLOURS = {
    "class_centres": "#1f77b4",
    "optimizer_state": "#aec7e8",
    "inputs": "#c7c7c7",
    "key_encoder": "#8c564b",
    "container": "#c49c94",
    "centre_grad": "#ff7f0e",
    "gathered_centres": "#17becf",
    "attention_temporaries": "#f7b6d2",
    "container_logits": "#ffbb78",
    "embedding_backward": "#c5b0d5",
    "normalized_centres": "#2ca02c",
    "embedding_temporaries": "#dbdb8d",
    "logits": "#d62728",
    "logit_grads": "#ff9896",
    "head_temporaries": "#9467bd",
    "key_activations": "#e377c2",
    "normalize_backward": "#98df8a",
    "optimizer_temporaries": "#bcbd22",
}
_PHASE_COLOURS = {"forward": "#1f77b4", "backward": "#d62728", "optimizer": "#2ca02c"}


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    return ax


def plot_memory_vs_classes(
    num_classes: Sequence[int] | None = None,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    heads: Mapping[str, Mapping[str, Any]] | None = None,
    measured: Mapping[int, int] | None = None,
    datasets: Mapping[str, int] | None = DATASETS,
    capacities_gib: Mapping[str, float] | None = DEVICE_CAPACITIES_GIB,
    show_terms: bool = True,
    ax=None,
):
    """Predicted memory against N on log axes, datasets as vertical lines, devices as horizontal ones.

    `heads`: label -> predict_memory kwargs (default: FC only). For the first head the
    curves of W alone and of W + optimizer state are drawn too (`show_terms`). `measured`:
    N -> measured peak bytes, drawn as points.
    """
    import numpy as np

    ax = _axes(ax)
    ns = np.unique(np.geomspace(1e3, 1e7, 61).astype(int)) if num_classes is None else np.asarray(num_classes)
    heads = heads or {"FC": {"head": "fc"}}
    base = dict(embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer)
    for i, (label, kwargs) in enumerate(heads.items()):
        preds = [predict_memory(int(n), **{**base, **kwargs}) for n in ns]
        ax.plot(ns, [p.peak / GiB for p in preds], lw=2, label=f"{label}: peak of one step")
        if i == 0 and show_terms:
            ax.plot(ns, [p.terms["class_centres"] / GiB for p in preds], ls=":", color="0.3", label=f"{label}: W alone")
            ax.plot(ns, [(p.terms["class_centres"] + p.terms["optimizer_state"]) / GiB for p in preds], ls="--",
                    color="0.3", label=f"{label}: W + optimizer state")
    if measured:
        xs = sorted(measured)
        ax.plot(xs, [measured[n] / GiB for n in xs], "ko", ms=6, label="measured peak")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    for name, n in (datasets or {}).items():
        ax.axvline(n, color="0.6", lw=0.8, ls="-.")
        ax.text(n, hi, f" {name}", rotation=90, va="top", ha="right", fontsize=8, color="0.35")
    for name, gib in (capacities_gib or {}).items():
        ax.axhline(gib, color="firebrick", lw=0.9, alpha=0.7)
        ax.text(ns[0], gib, f"{name} ", va="bottom", fontsize=8, color="firebrick")
    ax.set_ylim(lo, max(hi, 1.3 * max((capacities_gib or {"": 1}).values())))
    ax.set_xlabel("identities N")
    ax.set_ylabel("memory (GiB)")
    ax.set_title(f"FC head memory: D={embedding_dim}, B={batch_size}, {dtype_name(dtype)}, {optimizer}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def plot_breakdown(
    breakdowns: Mapping[str, MemoryBreakdown],
    unit: str = "GiB",
    capacity_gib: float | None = None,
    ax=None,
    measured: Mapping[str, int] | None = None,
    title: str | None = None,
):
    """Stacked bars, one per head, of the terms that make up each predicted peak.

    `measured`: label -> measured peak bytes, drawn as a black marker on its bar.
    """
    ax = _axes(ax)
    scale = _unit_scale(unit)
    labels = list(breakdowns)
    used: list[str] = []
    for bd in breakdowns.values():
        used += [n for n in bd.peak_terms() if n not in used]
    for name in used:
        bottoms = []
        for i, bd in enumerate(breakdowns.values()):
            terms = bd.peak_terms()
            before = sum(v for k, v in terms.items() if used.index(k) < used.index(name))
            bottoms.append(before / scale)
        heights = [bd.peak_terms().get(name, 0) / scale for bd in breakdowns.values()]
        ax.bar(labels, heights, bottom=bottoms, color=_TERM_COLOURS.get(name), label=name, edgecolor="white", lw=0.5)
    for i, bd in enumerate(breakdowns.values()):
        ax.text(i, bd.peak / scale, f"predicted {bd.peak / scale:,.1f}", ha="center", va="bottom", fontsize=8)
    if capacity_gib is not None:
        ax.axhline(capacity_gib * GiB / scale, color="firebrick", lw=1, ls="--", label=f"device {capacity_gib:g} GiB")
    if measured:
        xs = [labels.index(k) for k in measured]
        ax.plot(xs, [v / scale for v in measured.values()], "k_", ms=28, mew=2, label="measured peak", zorder=5)
    if title:
        ax.set_title(title)
    top = max([bd.peak / scale for bd in breakdowns.values()] + [capacity_gib * GiB / scale if capacity_gib else 0]
              + [v / scale for v in (measured or {}).values()])
    ax.set_ylim(0, 1.08 * top)  # room for the labels above the bars
    ax.set_ylabel(f"peak of one step ({unit}): model's terms" + (", measured: black" if measured else ""))
    handles, names = ax.get_legend_handles_labels()  # top of the stack first, as drawn
    ax.legend(handles[::-1], names[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_timeline(
    measurement: StepMeasurement,
    prediction: MemoryBreakdown | None = None,
    unit: str = "MiB",
    ax=None,
):
    """Bytes above the held tensors through one step, coloured by phase; the prediction as lines."""
    ax = _axes(ax)
    scale = _unit_scale(unit)
    t = [0.0] + list(measurement.timeline_ms)
    y = [0.0] + [v / scale for v in measurement.timeline_bytes]
    ph = [measurement.timeline_phase[0] if measurement.timeline_phase else ""] + list(measurement.timeline_phase)
    ax.step(t, y, where="post", color="black", lw=1.2, label="measured")
    spans: list[tuple[str, float, float]] = []
    for i, p in enumerate(ph):
        if spans and spans[-1][0] == p:
            spans[-1] = (p, spans[-1][1], t[i])
        else:
            spans.append((p, t[i], t[i]))
    end = t[-1]
    for k, (p, a, b) in enumerate(spans):
        b = spans[k + 1][1] if k + 1 < len(spans) else end
        if p:
            ax.axvspan(a, b, color=_PHASE_COLOURS.get(p, "0.8"), alpha=0.12, lw=0)
            ax.text((a + b) / 2, 0, p, ha="center", va="bottom", fontsize=8, color=_PHASE_COLOURS.get(p, "0.3"))
    if prediction is not None:
        ax.axhline(prediction.step_peak / scale, color="firebrick", ls="--", lw=1,
                   label=f"predicted step peak ({prediction.peak_phase})")
        levels: list[tuple[float, list[str]]] = []  # phases with (nearly) equal totals share one line
        for phase, value in prediction.phases.items():
            if phase == prediction.peak_phase or value <= 0.05 * prediction.step_peak:
                continue
            near = [lv for lv in levels if abs(lv[0] - value) <= 0.02 * prediction.step_peak]
            if near:
                near[0][1].append(phase)
            else:
                levels.append((value, [phase]))
        for value, names in levels:
            ax.axhline(value / scale, color="0.5", ls=":", lw=0.8)
            ax.text(end, value / scale, " predicted " + ", ".join(names), va="center", fontsize=7, color="0.4")
    ax.set_xlabel("time in the step (ms)")
    ax.set_ylabel(f"allocated above held ({unit})")
    cfg = measurement.config
    ax.set_title(f"one step of {cfg['head']}: N={cfg['num_classes']:,}, D={cfg['embedding_dim']}, B={cfg['batch_size']}")
    ax.legend(fontsize=8, loc="upper left")
    return ax
