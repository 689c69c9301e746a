"""Plots of the memory model and of a measured step (lessons 02-03, 08)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..checks import as_float
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
# The memory model's phases (model.HEAD_PHASES); a measured phase not split keeps its colour above.
_MODEL_PHASE_COLOURS = {
    "forward": "#1f77b4",
    "forward: attention": "#1f77b4",
    "forward: container": "#17becf",
    "backward: logits": "#d62728",
    "backward: centres": "#ff7f0e",
    "backward: scatter": "#9467bd",
    "backward": "#d62728",
    "optimizer": "#2ca02c",
}


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
        preds = [predict_memory(n, **{**base, **kwargs}) for n in ns]  # n checked there: 10.7 is refused
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
    for i, (name, n) in enumerate((datasets or {}).items()):
        ax.axvline(n, color="0.6", lw=0.8, ls="-.", label="identities of a public dataset" if i == 0 else None)
        ax.text(n, hi, f" {name}", rotation=90, va="top", ha="right", fontsize=8, color="0.35")
    for i, (name, gib) in enumerate((capacities_gib or {}).items()):
        ax.axhline(gib, color="firebrick", lw=0.9, alpha=0.7, label="memory of one GPU" if i == 0 else None)
        ax.text(ns[0], gib, f"{name} card: {gib:g} GiB ", va="bottom", fontsize=8, color="firebrick")
    # the top makes room for the devices' lines; the bottom is the smallest curve's, not zero (log axis)
    ax.set_ylim(lo, max(hi, 1.3 * max((capacities_gib or {"": 1}).values())))
    ax.set_xlabel("identities N (log scale)")
    ax.set_ylabel("memory of one head step (GiB, log scale)")
    names = ", ".join(heads)
    ax.set_title(f"Predicted memory of one head step against N ({names}): D={embedding_dim}, B={batch_size}, "
                 f"{dtype_name(dtype)}, {optimizer}", fontsize=10)
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
    scale = _unit_scale(unit)
    if capacity_gib is not None:
        capacity_gib = as_float("capacity_gib", capacity_gib, 0, low_open=True)
    ax = _axes(ax)
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
        ax.text(i, bd.peak / scale, f"predicted {bd.peak / scale:,.1f} {unit}", ha="center", va="bottom", fontsize=8)
    if capacity_gib is not None:
        ax.axhline(capacity_gib * GiB / scale, color="firebrick", lw=1, ls="--", label=f"device {capacity_gib:g} GiB")
    if measured:
        xs = [labels.index(k) for k in measured]
        ax.plot(xs, [v / scale for v in measured.values()], "k_", ms=28, mew=2, label="measured peak", zorder=5)
    if title is None:
        first = next(iter(breakdowns.values()), None)
        cfg = first.config if first is not None else {}
        title = ("Predicted peak of one head step, by term" + (
            f": N={cfg['num_classes']:,}, D={cfg['embedding_dim']}, B={cfg['batch_size']}, {cfg['dtype']}, "
            f"{cfg['optimizer']}" if cfg and all(bd.config.get(k) == cfg.get(k) for bd in breakdowns.values()
                                                 for k in ("num_classes", "embedding_dim", "batch_size", "dtype",
                                                           "optimizer")) else ""))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("head")
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
    """Bytes above the held tensors through one step, shaded by the memory model's phases.

    The shading follows `measurement.timeline_model_phase` (for FC: forward, backward: logits,
    backward: centres, optimizer; a measurement without it falls back to its three measured
    phases). With `prediction`, the dashed line is the predicted step peak and each phase's
    predicted total is drawn as a short line over that phase's span.
    """
    ax = _axes(ax)
    scale = _unit_scale(unit)
    t = [0.0] + list(measurement.timeline_ms)
    y = [0.0] + [v / scale for v in measurement.timeline_bytes]
    labels = list(getattr(measurement, "timeline_model_phase", None) or measurement.timeline_phase)
    ph = [labels[0] if labels else ""] + labels
    ax.step(t, y, where="post", color="black", lw=1.2, label="measured: allocated above held")
    end = t[-1]
    if prediction is not None:
        ax.axhline(prediction.step_peak / scale, color="firebrick", ls="--", lw=1,
                   label=f"model: step peak ({prediction.peak_phase})")
    spans: list[tuple[str, float, float]] = []  # (phase, start, end), the phase's records in between
    for i, p in enumerate(ph):
        if not spans or spans[-1][0] != p:
            if spans:
                spans[-1] = (spans[-1][0], spans[-1][1], t[i])
            spans.append((p, t[i], end))
    shaded: set[str] = set()
    model_drawn = False
    for p, a, b in spans:
        if not p:
            continue
        colour = _MODEL_PHASE_COLOURS.get(p, _PHASE_COLOURS.get(p, "0.8"))
        ax.axvspan(a, b, color=colour, alpha=0.13, lw=0, label=None if p in shaded else f"phase: {p}")
        shaded.add(p)
        if prediction is not None:
            values = [prediction.phases[q] for q in p.split(" + ") if q in prediction.phases]
            if values:
                ax.plot([a, b], [max(values) / scale] * 2, color=colour, lw=2.2, alpha=0.9, solid_capstyle="butt")
                model_drawn = True
    top = max(y + ([prediction.step_peak / scale] if prediction is not None else []))
    ax.set_ylim(0, 1.12 * top if top > 0 else 1)  # from zero: the heights compare as bytes do
    ax.set_xlim(0, end if end > 0 else 1)
    ax.set_xlabel("time from the step's start (ms)")
    ax.set_ylabel(f"memory allocated above the held tensors ({unit})")
    cfg = measurement.config
    extra = ", ".join(str(cfg[k]) for k in ("dtype", "optimizer") if cfg.get(k))
    ax.set_title(f"Memory through one {cfg['head']} step on {measurement.device}: N={cfg['num_classes']:,}, "
                 f"D={cfg['embedding_dim']}, B={cfg['batch_size']}" + (f", {extra}" if extra else ""), fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    if model_drawn:  # one entry for the phases' model lines, drawn in each phase's colour
        from matplotlib.lines import Line2D

        handles.insert(2, Line2D([], [], color="0.35", lw=2.2))
        names.insert(2, "model: the phase's total, over its span (its colour)")
    # below the axes: the curve and the model's lines stay visible
    ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return ax
