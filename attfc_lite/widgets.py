"""Interactive widgets of the lessons. Each widget's callback is a plain, tested function."""
from __future__ import annotations

import html
from typing import Any

from .memory import DATASETS, GiB, TERMS, _TERM_COLOURS, predict_memory, predicted_boundary

DEVICE_CHOICES_GIB = (8.0, 12.0, 16.0, 24.0, 40.0, 48.0, 80.0, 141.0)
#: The AttFC key encoder copies the backbone: an iResNet-50 has about 44 M parameters.
KEY_ENCODER_PARAMS = 44_000_000


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:,.1f} GiB"


def fit_verdict(
    num_classes: int,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    device_gib: float = 24.0,
    head: str = "fc",
    optimizer: str = "sgd",
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Will one training step of this head fit on a device of `device_gib` GiB?

    Returns `breakdown` (bytes of the terms that make up the predicted peak), `peak_bytes`,
    `capacity_bytes`, `fits`, `headroom_bytes` (capacity - peak; negative when it does not
    fit), `peak_phase`, `max_num_classes` (largest N that fits this device with the same
    settings) and a one-line `verdict`. The head alone is counted: the backbone's
    activations and the framework's own overhead come on top.
    """
    if isinstance(device_gib, bool) or not isinstance(device_gib, (int, float)) or not device_gib > 0:
        raise ValueError(f"device_gib must be a positive number of GiB, got {device_gib!r}")
    config = dict(embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer, head=head,
                  **model_kwargs)
    pred = predict_memory(num_classes, **config)
    capacity = int(device_gib * GiB)
    fits = pred.peak <= capacity
    headroom = capacity - pred.peak
    largest = predicted_boundary(capacity, **config)
    share = pred.peak / capacity
    if fits:
        verdict = (f"fits: needs {_gib(pred.peak)} of {device_gib:g} GiB ({share:.0%}), "
                   f"{_gib(headroom)} to spare; up to {largest:,} identities would fit")
    else:
        verdict = (f"does not fit: needs {_gib(pred.peak)}, {_gib(-headroom)} more than the {device_gib:g} GiB device; "
                   f"at most {largest:,} identities fit")
    return dict(
        breakdown=pred.peak_terms(), peak_bytes=pred.peak, capacity_bytes=capacity, fits=fits, headroom_bytes=headroom,
        peak_phase=pred.peak_phase, max_num_classes=largest, verdict=verdict,
    )


def verdict_html(result: dict[str, Any], width_px: int = 560) -> str:
    """A stacked bar of the breakdown against the device (a red line), and the verdict, as HTML."""
    scale = max(result["peak_bytes"], result["capacity_bytes"])
    segments = []
    for name, value in result["breakdown"].items():
        w = width_px * value / scale
        if w < 0.5:
            continue
        title = f"{name}: {_gib(value)} ({TERMS[name][2]})"
        segments.append(
            f'<div title="{html.escape(title)}" style="width:{w:.1f}px;height:22px;'
            f'background:{_TERM_COLOURS.get(name, "#999")}"></div>'
        )
    cap_x = width_px * result["capacity_bytes"] / scale
    legend = " ".join(
        f'<span style="color:{_TERM_COLOURS.get(n, "#999")}">&#9632;</span>&nbsp;{html.escape(n)} {_gib(v)}'
        for n, v in result["breakdown"].items()
    )
    colour = "#2a7a2a" if result["fits"] else "#b22222"
    return (
        f'<div style="position:relative;width:{width_px}px;display:flex;border:1px solid #ccc">{"".join(segments)}'
        f'<div style="position:absolute;left:{cap_x:.1f}px;top:-4px;height:30px;border-left:2px solid #b22222"></div>'
        f"</div>"
        f'<div style="font-size:11px;margin:4px 0">{legend}</div>'
        f'<div style="color:{colour};font-weight:bold">{html.escape(result["verdict"])}</div>'
        f'<div style="font-size:11px">peak in phase: {html.escape(result["peak_phase"])}</div>'
    )


def will_it_fit_widget(
    num_classes: int = DATASETS["MS1MV3"],
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    device_gib: float = 24.0,
    head: str = "fc",
):
    """The "will it fit?" widget: N, D, B, dtype, head and device memory in; bar and verdict out.

    Returns an ipywidgets.VBox with extra attributes: `controls` (name -> widget),
    `output` (the HTML widget), `result` (the last `fit_verdict` dict) and `update()`.
    """
    import ipywidgets as w

    presets = {f"{name} ({n:,})": n for name, n in DATASETS.items()}
    controls = dict(
        preset=w.Dropdown(options=["custom", *presets], value="custom", description="dataset"),
        num_classes=w.BoundedIntText(value=int(num_classes), min=2, max=10**9, step=1000, description="identities N"),
        embedding_dim=w.Dropdown(options=[128, 256, 512, 1024], value=embedding_dim, description="dim D"),
        batch_size=w.IntSlider(value=batch_size, min=16, max=2048, step=16, description="batch B"),
        dtype=w.Dropdown(options=["float32", "float16", "bfloat16"], value=dtype, description="dtype"),
        head=w.Dropdown(options=[("full FC", "fc"), ("Partial FC r=0.1", "partial_fc"), ("AttFC + iResNet-50 key", "attfc")],
                        value=head, description="head"),
        device_gib=w.Dropdown(options=[(f"{g:g} GiB", g) for g in DEVICE_CHOICES_GIB], value=float(device_gib),
                              description="device"),
    )
    output = w.HTML()
    box = w.VBox([w.HBox([controls["preset"], controls["num_classes"]]),
                  w.HBox([controls["embedding_dim"], controls["batch_size"]]),
                  w.HBox([controls["dtype"], controls["head"], controls["device_gib"]]), output])

    def update(*_: Any) -> None:
        head_name = controls["head"].value
        extra = {"backbone_params": KEY_ENCODER_PARAMS} if head_name == "attfc" else {}
        box.result = fit_verdict(
            controls["num_classes"].value, controls["embedding_dim"].value, controls["batch_size"].value,
            controls["dtype"].value, controls["device_gib"].value, head_name, **extra,
        )
        output.value = verdict_html(box.result)

    def on_preset(change: dict) -> None:
        if change["new"] in presets:
            controls["num_classes"].value = presets[change["new"]]

    controls["preset"].observe(on_preset, names="value")
    for name, control in controls.items():
        if name != "preset":
            control.observe(update, names="value")
    box.controls, box.output, box.update = controls, output, update
    update()
    return box


# -- the DCC-size widget (lesson 07) ---------------------------------------------------------


def interpolate_sweep(sweep: dict, value: float) -> dict[str, Any]:
    """Mean accuracy of a stored sweep at `value`: linear in log(value) between measured points.

    Returns 'accuracy', 'measured' (True when `value` is one of the sweep's values),
    'clamped' (True when `value` lies outside the measured range: the nearest end is given)
    and 'between' (the two measured values used).
    """
    import math

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


def dcc_size(ratio: float, num_classes: int, embedding_dim: int = 512, batch_size: int = 128,
             sweep: dict | None = None) -> dict[str, Any]:
    """What a container of `ratio` x `num_classes` entries costs and buys (the DCC-size widget's callback).

    Returns 'capacity' (entries Q), 'container_bytes' (Q x (4 D + 8)), 'attfc_peak_bytes' and
    'fc_peak_bytes' (the memory model's head step, fp32, SGD), 'attfc_breakdown', 'fc_breakdown',
    'identities_present' (expected share of the identities with at least one entry, for
    uniformly drawn labels: 1 - (1 - 1/N)^Q) and, with a stored `sweep` of dcc-ratio,
    'accuracy' from `interpolate_sweep` (None without one).
    """
    from .attfc import container_capacity

    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1] (the container's share of the identities), got {ratio!r}")
    q = container_capacity(int(num_classes), float(ratio))
    att = predict_memory(num_classes, embedding_dim, batch_size, head="attfc", container_size=q)
    fc = predict_memory(num_classes, embedding_dim, batch_size, head="fc")
    present = 1.0 - (1.0 - 1.0 / num_classes) ** q
    return {
        "ratio": float(ratio), "num_classes": int(num_classes), "batch_size": int(batch_size), "capacity": q,
        "container_bytes": att.terms["container"], "attfc_peak_bytes": att.peak, "fc_peak_bytes": fc.peak,
        "attfc_breakdown": att.peak_terms(), "fc_breakdown": fc.peak_terms(), "identities_present": present,
        "accuracy": interpolate_sweep(sweep, ratio) if sweep is not None else None,
    }


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def dcc_size_text(result: dict[str, Any]) -> str:
    """The DCC-size widget's numbers in a few lines of plain text."""
    lines = [
        f"N = {result['num_classes']:,} identities, container ratio {result['ratio']:g}: "
        f"Q = {result['capacity']:,} entries, {_bytes(result['container_bytes'])} (centres and labels)",
        f"head step, memory model (D = 512, B = 128, fp32, SGD): AttFC {_bytes(result['attfc_peak_bytes'])}, "
        f"full FC {_bytes(result['fc_peak_bytes'])} ({result['attfc_peak_bytes'] / result['fc_peak_bytes']:.3f} of FC)",
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
        ax_mem.text(left, row, f" {_bytes(left * GiB)}", va="center", fontsize=8)
    ax_mem.set_yticks(range(len(bars)), list(bars))
    ax_mem.set_xlim(0, 1.25 * result["fc_peak_bytes"] / GiB)
    ax_mem.set_ylim(-0.5, 2.9)  # room for the legend above the bars
    ax_mem.set_xlabel("peak of one head step (GiB), memory model")
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
        ax_acc.set_xlabel("container ratio Q / N")
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

    if isinstance(sweep, str):
        from .sweep import load_sweep

        sweep = load_sweep(sweep)
    largest = DATASETS["WebFace42M"]
    controls = dict(
        ratio=w.FloatLogSlider(value=float(ratio), base=10, min=-2, max=0, step=0.05, description="ratio Q/N",
                               readout_format=".3g", continuous_update=False),
        num_classes=w.FloatLogSlider(value=float(num_classes), base=10, min=3, max=math.log10(largest), step=0.05,
                                     description="identities N", readout_format=",.0f", continuous_update=False),
    )
    text, output = w.HTML(), w.Output()
    box = w.VBox([w.HBox(list(controls.values())), text, output])

    def update(*_: Any) -> None:
        n = min(largest, int(round(controls["num_classes"].value)))
        box.result = dcc_size(float(controls["ratio"].value), n, sweep=sweep)
        text.value = "<pre style='font-size:11px'>" + html.escape(dcc_size_text(box.result)) + "</pre>"
        with output:
            output.clear_output(wait=True)
            plot_dcc_size(box.result, sweep)
            plt.tight_layout()
            plt.show()

    for control in controls.values():
        control.observe(update, names="value")
    box.controls, box.output, box.update = controls, output, update
    update()
    return box
