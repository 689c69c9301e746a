"""The DCC-size widget (lesson 07): what a container of ratio x N entries costs in memory and buys in accuracy."""
from __future__ import annotations

import html
from typing import Any

from ..checks import ArgumentError, as_float, as_int
from ..memory.guard import format_bytes
from ..memory import DATASETS, GiB, _TERM_COLOURS, predict_memory
from .common import _check_result, figure_html, resolve_num_classes


def interpolate_sweep(sweep: dict, value: float) -> dict[str, Any]:
    """Mean accuracy of a stored sweep at `value`: linear in log(value) between measured points.

    Returns 'accuracy', 'measured' (True when `value` is one of the sweep's values),
    'clamped' (True when `value` lies outside the measured range: the nearest end is given)
    and 'between' (the two measured values used).
    """
    import math

    sweep = _check_result("sweep", sweep, ("summary",), "sweep.load_sweep")
    # the interpolation is in log(value): a ratio of 0 or below has no place on it
    value = as_float("value", value, 0, low_open=True)
    points = sorted((row["value"], row["accuracy_mean"]) for row in sweep["summary"])
    if not points:
        raise ValueError("the sweep has no summary rows; regenerate it with python -m attfc_lite sweep ...")
    xs = [p[0] for p in points]
    if value <= xs[0] or value >= xs[-1]:
        end = points[0] if value <= xs[0] else points[-1]
        exact = math.isclose(value, end[0], rel_tol=1e-9)
        return {"accuracy": end[1], "measured": exact, "clamped": not exact, "between": (end[0], end[0])}
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if math.isclose(value, x0, rel_tol=1e-9):
            return {"accuracy": y0, "measured": True, "clamped": False, "between": (x0, x0)}
        if x0 < value < x1:
            t = (math.log(value) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return {"accuracy": y0 + t * (y1 - y0), "measured": False, "clamped": False, "between": (x0, x1)}
    return {"accuracy": points[-1][1], "measured": True, "clamped": False, "between": (xs[-1], xs[-1])}


DCC_SWEEP_PARAM = "dcc-ratio"  # the `param` of a stored sweep of the container ratio


def _check_dcc_sweep(sweep: Any, keys: tuple[str, ...]) -> dict:
    """`sweep` if it is a stored sweep of the container ratio, else an ArgumentError naming `sweep`."""
    sweep = _check_result("sweep", sweep, keys, "sweep.load_sweep")
    param = sweep.get("param")
    if param != DCC_SWEEP_PARAM:
        got = f"a sweep of {param!r}" if param is not None else "a sweep without its 'param'"
        raise ArgumentError("sweep", f"must be a sweep of {DCC_SWEEP_PARAM!r} (the container ratio), got {got}; "
                                     f"load data/sweeps/dcc_ratio.json with sweep.load_sweep('dcc_ratio')")
    return sweep


def dcc_size(ratio: float, num_classes: int, embedding_dim: int = 512, batch_size: int = 128,
             sweep: dict | None = None) -> dict[str, Any]:
    """What a container of `ratio` x `num_classes` entries costs and buys (the DCC-size widget's callback).

    Returns 'capacity' (entries Q), 'container_bytes' (Q x (4 D + 8)), 'attfc_peak_bytes' and
    'fc_peak_bytes' (the memory model's head step, fp32, SGD), 'attfc_breakdown', 'fc_breakdown',
    'identities_present' (expected share of the identities with at least one entry, for
    uniformly drawn labels: 1 - (1 - 1/N)^Q) and, with a stored `sweep` of dcc-ratio,
    'accuracy' from `interpolate_sweep` (None without one). `num_classes` may be a dataset name.
    """
    from ..heads.attfc import container_capacity

    ratio = as_float("ratio", ratio, 0, 1, low_open=True)  # the container's share of the identities
    num_classes = resolve_num_classes(num_classes)
    if sweep is not None:
        sweep = _check_dcc_sweep(sweep, ("summary",))
    embedding_dim = as_int("embedding_dim", embedding_dim, 1)
    batch_size = as_int("batch_size", batch_size, 1)
    q = container_capacity(num_classes, ratio)
    att = predict_memory(num_classes, embedding_dim, batch_size, head="attfc", container_size=q)
    fc = predict_memory(num_classes, embedding_dim, batch_size, head="fc")
    present = 1.0 - (1.0 - 1.0 / num_classes) ** q
    return {
        "ratio": ratio, "num_classes": num_classes, "embedding_dim": embedding_dim, "batch_size": batch_size,
        "capacity": q,
        "container_bytes": att.terms["container"], "attfc_peak_bytes": att.peak, "fc_peak_bytes": fc.peak,
        "attfc_breakdown": att.peak_terms(), "fc_breakdown": fc.peak_terms(), "identities_present": present,
        "accuracy": interpolate_sweep(sweep, ratio) if sweep is not None else None,
    }


_DCC_KEYS = ("ratio", "num_classes", "capacity", "container_bytes", "attfc_peak_bytes", "fc_peak_bytes",
             "attfc_breakdown", "fc_breakdown", "identities_present")


def dcc_size_text(result: dict[str, Any]) -> str:
    """The DCC-size widget's numbers in a few lines of plain text."""
    result = _check_result("result", result, _DCC_KEYS, "dcc_size")
    lines = [
        f"N = {result['num_classes']:,} identities, container ratio {result['ratio']:g}: "
        f"Q = {result['capacity']:,} entries, {format_bytes(result['container_bytes'])} (centres and labels)",
        f"head step, memory model (D = {result.get('embedding_dim', 512)}, B = {result.get('batch_size', 128)}, "
        f"fp32, SGD): AttFC {format_bytes(result['attfc_peak_bytes'])}, "
        f"full FC {format_bytes(result['fc_peak_bytes'])} ({result['attfc_peak_bytes'] / result['fc_peak_bytes']:.3f} of FC)",
        f"identities with an entry in a full container (random labels): {result['identities_present']:.1%}",
    ]
    if result["capacity"] < result.get("batch_size", 128):
        lines.append(f"Q is smaller than the batch ({result.get('batch_size', 128)}): each step keeps only the "
                     f"last {result['capacity']:,} of its GCCs")
    acc = result.get("accuracy")
    if acc is not None:
        how = ("measured" if acc["measured"] else "nearest end of the sweep, not measured" if acc["clamped"]
               else f"interpolated between the measured ratios {acc['between'][0]:g} and {acc['between'][1]:g}")
        lines.append(f"verification accuracy at this ratio in the stored sweep: {acc['accuracy']:.3f} ({how}); "
                     f"measured at the sweep's N, not at this N")
    return "\n".join(lines)


def plot_dcc_size(result: dict[str, Any], sweep: dict | None = None, axes=None):
    """The DCC-size widget's picture: the model's head-step breakdown, AttFC next to full FC,
    and, with a stored dcc-ratio `sweep`, accuracy against the ratio with this ratio marked."""
    import matplotlib.pyplot as plt

    result = _check_result("result", result, _DCC_KEYS, "dcc_size")
    if sweep is not None:
        sweep = _check_dcc_sweep(sweep, ("summary", "seeds", "config", "device"))
    if axes is None:
        axes = plt.subplots(1, 2 if sweep is not None else 1, figsize=(11, 3.4) if sweep is not None else (6, 3.4))[1]
    ax_mem, ax_acc = (axes if sweep is not None else (axes, None))
    bars = {"full FC": result["fc_breakdown"], f"AttFC, Q = {result['capacity']:,}": result["attfc_breakdown"]}
    seen = set()
    for row, (name, terms) in enumerate(bars.items()):
        left = 0.0
        for term, value in terms.items():
            ax_mem.barh(row, value / GiB, left=left, color=_TERM_COLOURS.get(term, "#999"), edgecolor="white", lw=0.5,
                        label=term if term not in seen else None)
            seen.add(term)
            left += value / GiB
        ax_mem.text(left, row, f" {format_bytes(left * GiB)}", va="center", fontsize=8)
    ax_mem.set_yticks(range(len(bars)), list(bars))
    ax_mem.set_xlim(0, 1.25 * result["fc_peak_bytes"] / GiB)
    ax_mem.set_ylim(-0.5, 2.9)  # room for the legend above the bars
    ax_mem.set_xlabel("peak of one head step (GiB), memory model")
    ax_mem.set_ylabel("head")
    ax_mem.set_title(f"N = {result['num_classes']:,}, ratio {result['ratio']:g}", fontsize=10)
    ax_mem.legend(fontsize=7, loc="upper left", ncol=3)
    ax_mem.grid(alpha=0.3, axis="x")
    if ax_acc is not None:
        rows = sorted(sweep["summary"], key=lambda r: r["value"])
        xs = [r["value"] for r in rows]
        ax_acc.errorbar(xs, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_seed_std"] for r in rows],
                        fmt="o", capsize=3, label=f"measured, mean of {len(sweep['seeds'])} seeds ± std")
        ax_acc.plot(xs, [r["accuracy_mean"] for r in rows], "-", color="0.6", lw=1, label="interpolated (in log ratio)")
        if result.get("accuracy") is not None:
            ax_acc.plot([result["ratio"]], [result["accuracy"]["accuracy"]], "*", ms=14, color="tab:red",
                        label=f"ratio {result['ratio']:g}: {result['accuracy']['accuracy']:.3f}")
        ax_acc.set_xscale("log")
        ax_acc.set_xlabel("container ratio Q / N (log scale)")
        ax_acc.set_ylabel("10-fold verification accuracy")
        n_sweep = sweep["config"].get("num_classes", "?")
        ax_acc.set_title(f"stored sweep: N = {n_sweep:,} on {sweep['device']}" if isinstance(n_sweep, int)
                         else f"stored sweep on {sweep['device']}", fontsize=10)
        ax_acc.legend(fontsize=8, loc="lower right")
        ax_acc.grid(alpha=0.3)
    return axes


def dcc_size_widget(ratio: float = 0.3, num_classes: int = DATASETS["WebFace42M"], sweep: dict | str | None = "dcc_ratio"):
    """The DCC-size widget: sliders for the container ratio (0.01 to 1) and the identities
    (1,000 to WebFace42M's 2,059,906); out: `dcc_size_text` and `plot_dcc_size`.

    `sweep`: a stored dcc-ratio sweep (a dict, or a name for `sweep.load_sweep`), or None.
    Returns an ipywidgets.VBox with `controls`, `output`, `result` (the last `dcc_size`
    dict) and `update()`.
    """
    import math

    import ipywidgets as w
    import matplotlib.pyplot as plt

    largest = DATASETS["WebFace42M"]
    # the sliders' ranges: a start outside them would be clamped without a word
    ratio = as_float("ratio", ratio, 0.01, 1)
    num_classes = resolve_num_classes(num_classes)
    if not 1000 <= num_classes <= largest:
        raise ArgumentError("num_classes", f"must be a whole number >= 1,000 and <= {largest:,} in the widget "
                                           f"(dcc_size takes any N), got {num_classes:,}")
    if isinstance(sweep, str):
        from ..sweep import load_sweep

        sweep = load_sweep(sweep)
    if sweep is not None:
        sweep = _check_dcc_sweep(sweep, ("summary", "seeds", "config", "device"))
    controls = dict(
        ratio=w.FloatLogSlider(value=float(ratio), base=10, min=-2, max=0, step=0.05, description="ratio Q/N",
                               readout_format=".3g", continuous_update=False),
        num_classes=w.FloatLogSlider(value=float(num_classes), base=10, min=3, max=math.log10(largest), step=0.05,
                                     description="identities N", readout_format=",.0f", continuous_update=False),
    )
    text, output = w.HTML(), w.HTML()
    box = w.VBox([w.HBox(list(controls.values())), text, output])

    def update(*_: Any) -> None:
        n = min(largest, int(round(controls["num_classes"].value)))
        box.result = dcc_size(float(controls["ratio"].value), n, sweep=sweep)
        text.value = "<pre style='font-size:11px'>" + html.escape(dcc_size_text(box.result)) + "</pre>"
        plot_dcc_size(box.result, sweep)
        output.value = figure_html(plt.gcf())

    for control in controls.values():
        control.observe(update, names="value")
    box.controls, box.output, box.update = controls, output, update
    update()
    return box
