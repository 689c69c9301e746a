"""Where each head's memory goes as the world grows (lesson 10): per-rank bytes and bytes sent.

The per-rank memory is lesson 02's model with the world size, `predict_memory(..., world_size=P)`:
FC's W, its gradient and momentum fall as N / P, but its logits are those of all P*B gathered
embeddings against the rank's N / P centres, so they stay P*B x N/P = B x N; AttFC holds its
whole container on every rank and only its enqueue grows. `traffic_per_step` is what each rank
sends in one step, collective by collective, counted as `World` counts them (ring algorithms).
"""
from __future__ import annotations

from ..checks import ArgumentError, as_int
from ..memory import predict_memory

__all__ = ["traffic_per_step", "rank_memory_table", "plot_rank_memory", "WORLD_SIZES"]

WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)


def traffic_per_step(head: str, num_classes: int, embedding_dim: int, batch_size: int, world_size: int,
                     backbone_params: int = 0, dtype_bytes: int = 4) -> dict[str, int]:
    """Bytes one rank sends in one training step, by collective (none with one process).

    FC and Partial FC: the embeddings and labels gathered, three all-reduces of one number per
    gathered row (the softmax's max and sum, the target's logit) and the all-reduce of the
    gathered embeddings' gradient. AttFC: the GCCs and labels gathered. Every head: DDP's
    all-reduce of the backbone's gradient (`backbone_params` fp32 values).
    """
    n, d, b = (as_int(k, v, 1) for k, v in (("num_classes", num_classes), ("embedding_dim", embedding_dim),
                                            ("batch_size", batch_size)))
    p = as_int("world_size", world_size, 1)
    if head not in ("fc", "partial_fc", "attfc"):
        raise ArgumentError("head", f"must be 'fc', 'partial_fc' or 'attfc', got {head!r}")
    if p == 1:
        return {}
    gather = p - 1  # an all-gather sends its own part to each other rank
    reduce = 2 * (p - 1) / p  # a ring all-reduce sends twice its share of the tensor
    e, rows = dtype_bytes, p * b
    if head == "attfc":
        sent = {"gcc": gather * b * d * e, "gcc_labels": gather * b * 8}
    else:
        sent = {"embeddings": gather * b * d * e, "labels": gather * b * 8,
                "softmax_max": reduce * rows * 4, "softmax_sum": reduce * rows * 4, "target_logit": reduce * rows * 4,
                "embedding_grad": reduce * rows * d * e}
    if backbone_params:
        sent["backbone_grad (DDP)"] = reduce * backbone_params * 4
    return {k: int(round(v)) for k, v in sent.items()}


def rank_memory_table(num_classes: int, embedding_dim: int, batch_size: int, heads=("fc", "partial_fc", "attfc"),
                      world_sizes=WORLD_SIZES, **knobs) -> dict[str, list[dict]]:
    """For each head, one row per world size: held, step and peak bytes of one rank."""
    table = {}
    for head in heads:
        rows = []
        for p in world_sizes:
            m = predict_memory(num_classes, embedding_dim, batch_size, head=head, world_size=p, **knobs)
            rows.append({"world_size": p, "held": m.held, "step_peak": m.step_peak, "peak": m.peak,
                         "terms": m.terms})
        table[head] = rows
    return table


def plot_rank_memory(num_classes: int, embedding_dim: int, batch_size: int, heads=("fc", "partial_fc", "attfc"),
                     world_sizes=WORLD_SIZES, measured: list[dict] | None = None, ax=None, **knobs):
    """Predicted peak of one rank against the world size, per head (log-log), with measured
    points (`measure_rank_memory` results) drawn on their lines as rings: one legend entry per
    head's measurements (the largest rank's peak at each world size measured). Heads are named as
    the lessons name them (full FC, Partial FC, AttFC); the y axis has plain number labels."""
    import matplotlib.pyplot as plt

    names = {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}
    colours = {"fc": "C0", "partial_fc": "C1", "attfc": "C2"}
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    table = rank_memory_table(num_classes, embedding_dim, batch_size, heads, world_sizes, **knobs)
    for head, rows in table.items():
        ax.plot([r["world_size"] for r in rows], [r["peak"] / 2**20 for r in rows], marker=".",
                color=colours.get(head), label=f"{names.get(head, head)} (model)")
    points: dict[str, dict[int, float]] = {}  # head -> world size -> the largest rank's peak (MiB)
    for m in measured or []:
        peak = max(r["peak_bytes"] for r in m["ranks"]) / 2**20
        at = points.setdefault(m["head"], {})
        at[m["world_size"]] = max(peak, at.get(m["world_size"], 0.0))
    for head, at in points.items():
        sizes = sorted(at)
        ax.plot(sizes, [at[p] for p in sizes], "o", linestyle="none", markerfacecolor="none", markersize=10,
                color=colours.get(head),
                label=f"{names.get(head, head)} measured (P = {', '.join(str(p) for p in sizes)})")
    _log_axes(ax, sorted({r["world_size"] for rows in table.values() for r in rows}))
    ax.set_xlabel("processes (GPUs), P")
    ax.set_ylabel("peak memory of one rank (MiB)")
    ax.set_title(f"one rank's head step: N = {num_classes:,}, D = {embedding_dim}, B = {batch_size} per rank",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def fitting_world_size(head: str, num_classes: int, embedding_dim: int, batch_size: int, capacity_bytes: float,
                       world_sizes=WORLD_SIZES, **knobs) -> int | None:
    """The smallest world size in `world_sizes` at which one rank's predicted peak (`predict_memory`)
    is at most `capacity_bytes`; None when none of them fits."""
    from ..checks import as_float

    capacity = as_float("capacity_bytes", capacity_bytes, 0, low_open=True)
    for p in sorted(as_int("world_sizes", w, 1) for w in world_sizes):
        if predict_memory(num_classes, embedding_dim, batch_size, head=head, world_size=p, **knobs).peak <= capacity:
            return p
    return None


def plot_rank_memory_vs_capacity(num_classes: int, embedding_dim: int, batch_size: int, capacity_gib: float = 80.0,
                                 heads=("fc", "partial_fc", "attfc"), world_sizes=WORLD_SIZES, ax=None, **knobs):
    """One rank's predicted peak in GiB against the world size, per head (log-log), with one GPU's
    memory as a horizontal line and, for each head, the smallest world size that fits it marked
    (a filled point with its value in GiB written next to it; the legend says "never" when no world
    size in `world_sizes` fits). Heads are named as the lessons name them (full FC, Partial FC,
    AttFC); the y axis has plain number labels at 1, 2, 3 and 5 times each power of ten."""
    import matplotlib.pyplot as plt

    from ..checks import as_float

    capacity_gib = as_float("capacity_gib", capacity_gib, 0, low_open=True)
    names = {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}
    colours = {"fc": "C0", "partial_fc": "C1", "attfc": "C2"}
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    table = rank_memory_table(num_classes, embedding_dim, batch_size, heads, world_sizes, **knobs)
    for head, rows in table.items():
        name = names.get(head, head)
        xs, ys = [r["world_size"] for r in rows], [r["peak"] / 2**30 for r in rows]
        ax.plot(xs, ys, marker=".", color=colours.get(head), label=f"{name} (model)")
        fits = [(x, y) for x, y in zip(xs, ys) if y <= capacity_gib]
        if fits:
            (x, y) = fits[0]
            ax.plot([x], [y], "o", markersize=8, color=colours.get(head), label=f"{name}: fits from P = {x}")
            ax.annotate(f"{y:.1f} GiB", (x, y), xytext=(7, -11), textcoords="offset points", fontsize=8,
                        color=colours.get(head), bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                       "alpha": 0.8})
        else:
            ax.plot([], [], "o", markersize=8, color=colours.get(head),
                    label=f"{name}: never fits up to P = {max(xs)}")
    ax.axhline(capacity_gib, color="firebrick", lw=1, ls="--", label=f"one GPU's memory ({capacity_gib:g} GiB)")
    _log_axes(ax, sorted({r["world_size"] for rows in table.values() for r in rows}))
    ax.set_xlabel("processes (GPUs), P")
    ax.set_ylabel("peak memory of one rank (GiB)")
    ax.set_title(f"one rank's head step: N = {num_classes:,}, D = {embedding_dim}, B = {batch_size} per rank",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def _log_axes(ax, sizes) -> None:
    """Log-log axes with plain tick labels: P = 1, 2, 4, ... and 1, 2, 3, 5 times each power of ten."""
    from matplotlib import ticker

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(p) for p in sizes])  # 1, 2, 4, ... rather than 2^0, 2^1, ...
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0), numticks=30))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # no 3x10^1
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    low = min(v for line in ax.get_lines() for v in line.get_ydata() if v > 0)
    tick = max(s * 10.0 ** k for k in range(-3, 7) for s in (1, 2, 3, 5) if s * 10.0 ** k <= low)
    ax.set_ylim(bottom=min(ax.get_ylim()[0], tick / 1.1))  # a labelled tick below the lowest line
