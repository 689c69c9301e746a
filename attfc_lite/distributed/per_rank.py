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
    points (`measure_rank_memory` results) drawn on their lines."""
    import matplotlib
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    table = rank_memory_table(num_classes, embedding_dim, batch_size, heads, world_sizes, **knobs)
    colours = {"fc": "C0", "partial_fc": "C1", "attfc": "C2"}
    for head, rows in table.items():
        ax.plot([r["world_size"] for r in rows], [r["peak"] / 2**20 for r in rows], marker=".",
                color=colours.get(head), label=f"{head} (model)")
    for m in measured or []:
        peak = max(r["peak_bytes"] for r in m["ranks"])
        ax.plot([m["world_size"]], [peak / 2**20], "o", markerfacecolor="none", markersize=10,
                color=colours.get(m["head"]), label=f"{m['head']} measured, P = {m['world_size']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["world_size"] for rows in table.values() for r in rows})
    ax.set_xticks(sizes, [str(p) for p in sizes])  # 1, 2, 4, ... rather than 2^0, 2^1, ...
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("processes (GPUs), P")
    ax.set_ylabel("peak memory of one rank (MiB)")
    ax.set_title(f"one rank's head step: N = {num_classes:,}, D = {embedding_dim}, B = {batch_size} per rank",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
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
    (a filled point; the legend says "never" when no world size in `world_sizes` fits)."""
    import matplotlib.pyplot as plt

    from ..checks import as_float

    capacity_gib = as_float("capacity_gib", capacity_gib, 0, low_open=True)
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    table = rank_memory_table(num_classes, embedding_dim, batch_size, heads, world_sizes, **knobs)
    colours = {"fc": "C0", "partial_fc": "C1", "attfc": "C2"}
    for head, rows in table.items():
        xs, ys = [r["world_size"] for r in rows], [r["peak"] / 2**30 for r in rows]
        ax.plot(xs, ys, marker=".", color=colours.get(head), label=f"{head} (model)")
        fits = [(x, y) for x, y in zip(xs, ys) if y <= capacity_gib]
        if fits:
            ax.plot([fits[0][0]], [fits[0][1]], "o", markersize=8, color=colours.get(head),
                    label=f"{head}: fits from P = {fits[0][0]}")
        else:
            ax.plot([], [], "o", markersize=8, color=colours.get(head),
                    label=f"{head}: never fits up to P = {max(xs)}")
    ax.axhline(capacity_gib, color="firebrick", lw=1, ls="--", label=f"one GPU's memory ({capacity_gib:g} GiB)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["world_size"] for rows in table.values() for r in rows})
    ax.set_xticks(sizes, [str(p) for p in sizes])  # 1, 2, 4, ... rather than 2^0, 2^1, ...
    ax.minorticks_off()
    ax.set_xlabel("processes (GPUs), P")
    ax.set_ylabel("peak memory of one rank (GiB)")
    ax.set_title(f"one rank's head step: N = {num_classes:,}, D = {embedding_dim}, B = {batch_size} per rank",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return ax
