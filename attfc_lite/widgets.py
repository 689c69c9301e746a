"""Interactive widgets of the lessons. Each widget's callback is a plain, tested function."""
from __future__ import annotations

import html
import math
from typing import Any

from .checks import ArgumentError, as_bool, as_choice, as_float, as_int
from .memory.guard import format_bytes
from .memory import (
    BACKBONES,
    DATASETS,
    OPTIMIZERS,
    PRECISIONS,
    STEP_TERMS,
    GiB,
    _TERM_COLOURS,
    canonical_head,
    precision_config,
    predict_memory,
    predict_training_step,
    training_step_boundary,
)

DEVICE_CHOICES_GIB = (8.0, 12.0, 16.0, 24.0, 40.0, 48.0, 80.0, 141.0)
#: The cards the course compares: sold as 24, 40 and 80 GB, they hold 24, 40 and 80 GiB.
CARDS_GIB = (24.0, 40.0, 80.0)
#: The AttFC key encoder copies the backbone: insightface's iResNet-50 has 43.6 M parameters.
KEY_ENCODER_PARAMS = BACKBONES["iresnet50"].params
#: The largest N the will-it-fit widget takes (WebFace42M has 2.06 M identities).
MAX_WIDGET_CLASSES = 10_000_000
_WIDGET_DIMS = (128, 256, 512, 1024)  # the will-it-fit widget's menu of D
#: The container's size in the official AttFC configuration: 30 % of the identities (its
#: `dcc_ratio`; the official code also rounds Q down to a multiple of the batch).
OFFICIAL_CONTAINER_RATIO = 0.3
_HEAD_LABELS = {"fc": "full FC", "partial_fc": "Partial FC (r = 0.1)", "attfc": "AttFC"}
_OPTIMIZER_LABELS = {"sgd": "SGD, momentum 0.9 (one fp32 state buffer)", "adam": "Adam (two fp32 state buffers)",
                     "adamw": "AdamW (two fp32 state buffers)"}
_PART_COLOURS = {"head": "#1f77b4", "backbone": "#2ca02c", "key encoder": "#8c564b"}
_STEP_COLOURS = {
    "backbone_weights": "#2ca02c", "backbone_optimizer_state": "#98df8a", "backbone_grads": "#bcbd22",
    "backbone_activations": "#006400", "backbone_half_weights": "#9acd32", "backbone_optimizer_temporaries": "#556b2f",
    "images": "#7f7f7f", "key_encoder_weights": "#8c564b", "key_image_activations": "#e377c2",
    "half_centres": "#6baed6", "half_centre_grad": "#fd8d3c", "centre_norms": "#c7c7c7", "cosines": "#d62728",
    "log_softmax": "#ff9896", "loss_copies": "#9467bd",
}


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:,.1f} GiB"


def _colour(name: str) -> str:
    return _STEP_COLOURS.get(name) or _TERM_COLOURS.get(name, "#999")


def figure_html(fig) -> str:
    """`fig` (tight layout) as an <img> with an inline PNG, the one the inline backend would show; closes it.

    The widgets show their plot in an HTML widget rather than an Output widget: a notebook
    executor (nbclient, behind `make notebooks`) copies an Output widget's large PNG back to the
    kernel and can hang doing so, while an HTML widget's value only travels to the page."""
    import base64

    import matplotlib.pyplot as plt
    from IPython.core.pylabtools import print_figure

    try:
        fig.tight_layout()
        png = print_figure(fig, "png", bbox_inches="tight")  # matplotlib_inline's PNG formatter
    finally:
        plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%" alt="plot">'


def dataset_for(num_classes: int) -> str:
    """The dataset menu's entry for a typed N: the name in `DATASETS` with exactly N identities, else 'custom'."""
    return next((name for name, n in DATASETS.items() if n == num_classes), "custom")


def _dataset_size(name: Any) -> int | None:
    """The identities of the dataset `name` of `DATASETS` (any case: 'webface42m'), else None."""
    if isinstance(name, str):
        for key, n in DATASETS.items():
            if key.lower() == name.strip().lower():
                return n
    return None


def resolve_num_classes(num_classes: int | str) -> int:
    """N from a number of identities (1e6 accepted, 10.7 refused) or a dataset name of `DATASETS`
    (any case); an ArgumentError (a ValueError) names the argument and what is allowed."""
    n = _dataset_size(num_classes)
    if n is not None:
        return n
    try:
        return as_int("num_classes", num_classes, 2)
    except ArgumentError:
        raise ArgumentError("num_classes", f"must be a whole number of identities >= 2 or a dataset name of "
                                           f"{sorted(DATASETS)} (any case), got {num_classes!r}") from None


def _check_optimizer(optimizer: str, choices: tuple[str, ...] = OPTIMIZERS) -> str:
    if not isinstance(optimizer, str) or optimizer.lower() not in choices:
        raise ArgumentError("optimizer", f"must be one of {choices} (SGD with momentum or Adam), got {optimizer!r}")
    return optimizer.lower()


def _check_backbone(backbone: str | None) -> str | None:
    if backbone is not None and (not isinstance(backbone, str) or backbone not in BACKBONES):
        raise ArgumentError("backbone", f"must be one of {sorted(BACKBONES)} or None (the head alone), "
                                        f"got {backbone!r}")
    return backbone


def _check_container_size(container_size: int | None, maximum: int | None = None) -> int | None:
    return None if container_size is None else as_int("container_size", container_size, 1, maximum)


#: fit_verdict's keywords beyond its signature (`predict_training_step`'s, and `dtype`), with the
#: head each belongs to (None: every head).
_FIT_KEYWORDS = {"momentum": None, "weight_decay": None, "dtype": None, "sample_rate": "partial_fc",
                 "container_ratio": "attfc", "num_keys": "attfc"}


def _check_fit_keywords(kind: str, container_size: Any, given: dict[str, Any]) -> None:
    """Refuse a keyword fit_verdict does not take (a TypeError, as Python's own) and an option of
    another head than `kind` (an ArgumentError naming it: it would be ignored without a word)."""
    unknown = sorted(k for k in given if k not in _FIT_KEYWORDS)
    if unknown:
        raise TypeError(f"fit_verdict() got an unexpected keyword argument {unknown[0]!r}; besides its own "
                        f"arguments it takes {sorted(_FIT_KEYWORDS)}")
    foreign = [k for k in given if _FIT_KEYWORDS[k] not in (None, kind)]
    if container_size is not None and kind != "attfc":
        foreign.insert(0, "container_size")
    if foreign:
        owner = "attfc" if foreign[0] == "container_size" else _FIT_KEYWORDS[foreign[0]]
        raise ArgumentError(foreign[0], f"is an option of head={owner!r}, which head={kind!r} would ignore; drop it "
                                        f"or pass head={owner!r}")


def _check_result(name: str, result: Any, keys: tuple[str, ...], made_by: str) -> dict[str, Any]:
    """`result` if it is a dict with `keys` (what `made_by` returns), else an ArgumentError saying so."""
    if not isinstance(result, dict):
        raise ArgumentError(name, f"must be the dict {made_by} returns, got {type(result).__name__}")
    missing = [k for k in keys if k not in result]
    if missing:
        raise ArgumentError(name, f"must be the dict {made_by} returns; it lacks {missing}")
    return result


_VERDICT_KEYS = ("dataset", "num_classes", "embedding_dim", "batch_size", "precision_label", "optimizer", "head",
                 "backbone", "parts", "peak_bytes", "peak_phase", "verdict", "head_only_peak_bytes", "head_only_fits",
                 "fc_max_num_classes_24gb", "notes", "breakdown", "part_of", "descriptions", "capacity_bytes", "fits")


def fit_verdict(
    num_classes: int | str,
    embedding_dim: int = 512,
    batch_size: int = 128,
    precision: str = "fp32",
    device_gib: float = 24.0,
    head: str = "fc",
    optimizer: str = "sgd",
    backbone: str | None = "iresnet50",
    container_size: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Will one training step fit on a device of `device_gib` GiB? (the will-it-fit widget's callback)

    The whole step by default: the head next to the backbone (`backbone`, a name of
    `memory.BACKBONES`: weights, gradients, optimizer state, activations of the batch; None:
    the head alone) and, for AttFC, the key encoder. `precision`: a name of
    `memory.PRECISIONS` ('fp32', 'mixed_fp16', 'mixed_bf16': autocast with fp32 master weights;
    'pure_fp16' / 'pure_bf16': everything in 16 bits, not how models are trained; the old dtype
    names 'float32' / 'float16' / 'bfloat16' mean fp32 / pure_fp16 / pure_bf16). AttFC's
    container: `container_size` Q, or None for Q = 0.3 N (the official configuration).
    `model_kwargs`: momentum, weight_decay, and the options of one head (sample_rate for
    'partial_fc'; container_ratio, num_keys for 'attfc'); a head's option given with another
    head (container_size too) is refused, not ignored. `num_classes` may be a dataset name.

    Returns a dict: `breakdown` (bytes of every term alive at the predicted peak; they sum to
    `peak_bytes`), `descriptions` and `part_of` (each term's meaning and part), `parts` (the
    peak split into 'head', 'backbone', 'key encoder'), `peak_bytes`, `peak_phase`,
    `capacity_bytes`, `fits`, `headroom_bytes`, `head_only_peak_bytes` and `head_only_fits`
    (the head's step alone), `max_num_classes` (largest N whose step fits this device with the
    same settings; None: every N fits), `fc_max_num_classes_24gb` (where the full-FC step with
    these settings stops fitting a 24 GB card), `container_size`, the settings, `verdict` (one
    line) and `notes` (what else to know).
    """
    n = resolve_num_classes(num_classes)
    kind = canonical_head(head)
    _check_fit_keywords(kind, container_size, model_kwargs)
    if "dtype" in model_kwargs:  # the widget's old name for the precision menu
        precision = model_kwargs.pop("dtype")
    device_gib = as_float("device_gib", device_gib, 0, low_open=True)
    if int(device_gib * GiB) < 1:  # the capacity is counted in whole bytes
        raise ArgumentError("device_gib", f"must hold at least one byte (>= {1 / GiB:.3g} GiB), got {device_gib:g}")
    embedding_dim = as_int("embedding_dim", embedding_dim, 1)
    batch_size = as_int("batch_size", batch_size, 1)
    pc = precision_config(precision)
    opt = _check_optimizer(optimizer)
    backbone = _check_backbone(backbone)
    container_size = _check_container_size(container_size)
    config = dict(embedding_dim=embedding_dim, batch_size=batch_size, precision=pc["precision"], optimizer=opt,
                  head=kind, backbone=backbone, **model_kwargs)
    if kind == "attfc":
        config.update(container_size=container_size)
        config.setdefault("container_ratio", OFFICIAL_CONTAINER_RATIO)
    step = predict_training_step(n, **config)
    capacity = int(device_gib * GiB)
    fits = step.peak <= capacity
    headroom = capacity - step.peak
    largest = training_step_boundary(capacity, **config)
    fc_config = {k: v for k, v in config.items() if k not in ("container_size", "container_ratio", "num_keys")}
    fc_config["head"] = "fc"
    fc_24 = training_step_boundary(int(24 * GiB), **fc_config)
    breakdown = step.peak_terms()
    parts = step.parts()
    what = "one training step" if backbone is not None else "the head's step alone"
    share = step.peak / capacity
    if fits:
        more = ("any number of identities would fit" if largest is None
                else f"up to {largest:,} identities would fit")
        verdict = (f"fits: {what} needs {_gib(step.peak)} of {device_gib:g} GiB ({share:.0%}), "
                   f"{_gib(headroom)} to spare; {more}")
    else:
        verdict = (f"does not fit: {what} needs {_gib(step.peak)}, {_gib(-headroom)} more than the "
                   f"{device_gib:g} GiB device; at most {largest:,} identities fit")
    notes = []
    if backbone is None:
        notes.append("the head alone: the backbone's weights, gradients, optimizer state and activations come on top")
    if kind == "attfc":
        q = step.head.symbols["Q"]
        if container_size is None:
            notes.append(f"AttFC container Q = 0.3 N = {q:,} (the official configuration's ratio): AttFC's memory "
                         f"still grows with N through Q (Q x (4D + 8) bytes of container, B x Q logits) unless Q "
                         f"is fixed")
        else:
            notes.append(f"AttFC container fixed at Q = {q:,}: the head's memory no longer depends on N")
        if pc["amp_dtype"]:
            notes.append("AttFC's head stays fp32 under mixed precision (the official code autocasts the backbone)")
    if pc["precision"].startswith("pure"):
        notes.append(f"{pc['label']}: a lower bound, not a training recipe (fp16 master weights lose small updates)")
    if pc["amp_dtype"] and kind in ("fc", "partial_fc"):
        notes.append("mixed precision does not shrink the FC head: W, its gradient and the optimizer state stay "
                     "fp32, and so does F.normalize(W)'s backward, the head's peak at D > B")
    return dict(
        num_classes=n, dataset=dataset_for(n), embedding_dim=embedding_dim, batch_size=batch_size,
        precision=pc["precision"], precision_label=pc["label"], optimizer=opt, head=kind, backbone=backbone,
        container_size=step.head.symbols["Q"] if kind == "attfc" else None,
        breakdown=breakdown, descriptions={name: step.describe(name) for name in breakdown},
        part_of={name: ("key encoder" if name.startswith("key_encoder") or name == "key_image_activations"
                        else "backbone" if name in STEP_TERMS else "head") for name in breakdown},
        parts=parts, peak_bytes=step.peak, peak_phase=step.peak_phase, head_step_phase=step.config["head_step_phase"],
        capacity_bytes=capacity, fits=fits, headroom_bytes=headroom, head_only_peak_bytes=step.head.peak,
        head_only_fits=step.head.peak <= capacity, max_num_classes=largest, fc_max_num_classes_24gb=fc_24,
        verdict=verdict, notes=notes,
    )


def verdict_text(result: dict[str, Any]) -> str:
    """`fit_verdict`'s result in a few lines of plain text: settings, the parts of the total, the verdict, notes."""
    result = _check_result("result", result, _VERDICT_KEYS, "fit_verdict")
    backbone = BACKBONES[result["backbone"]].name if result["backbone"] else "no backbone (head alone)"
    lines = [
        f"{result['dataset']}: N = {result['num_classes']:,} identities, D = {result['embedding_dim']}, "
        f"B = {result['batch_size']}, {result['precision_label']}, {_OPTIMIZER_LABELS[result['optimizer']]}, "
        f"{_HEAD_LABELS[result['head']]}, {backbone}",
        "peak of the step: " + " + ".join(f"{part} {_gib(v)}" for part, v in result["parts"].items() if v)
        + f" = {_gib(result['peak_bytes'])} (phase: {result['peak_phase']})",
        result["verdict"],
        f"the head's step alone: {_gib(result['head_only_peak_bytes'])} "
        f"({'fits' if result['head_only_fits'] else 'does not fit'} on its own)",
        f"with these settings the full-FC step stops fitting a 24 GB card above N = "
        f"{result['fc_max_num_classes_24gb']:,} identities",
    ]
    return "\n".join(lines + result["notes"])


def verdict_html(result: dict[str, Any], width_px: int = 560) -> str:
    """A stacked bar of the breakdown against the device (a red line), the parts, the verdict and notes, as HTML."""
    result = _check_result("result", result, _VERDICT_KEYS, "fit_verdict")
    width_px = as_int("width_px", width_px, 1)
    scale = max(result["peak_bytes"], result["capacity_bytes"])
    segments = []
    for name, value in result["breakdown"].items():
        w = width_px * value / scale
        if w < 0.5:
            continue
        title = f"{result['part_of'][name]}: {name}: {_gib(value)} ({result['descriptions'][name]})"
        segments.append(
            f'<div title="{html.escape(title)}" style="width:{w:.1f}px;height:22px;'
            f'background:{_colour(name)}"></div>'
        )
    cap_x = width_px * result["capacity_bytes"] / scale
    legend = " ".join(
        f'<span style="color:{_colour(n)}">&#9632;</span>&nbsp;{html.escape(n)} {_gib(v)}'
        for n, v in result["breakdown"].items()
    )
    parts = " + ".join(f"<b>{html.escape(p)}</b> {_gib(v)}" for p, v in result["parts"].items() if v)
    colour = "#2a7a2a" if result["fits"] else "#b22222"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
    return (
        f'<div style="position:relative;width:{width_px}px;display:flex;border:1px solid #ccc">{"".join(segments)}'
        f'<div style="position:absolute;left:{cap_x:.1f}px;top:-4px;height:30px;border-left:2px solid #b22222"></div>'
        f"</div>"
        f'<div style="font-size:11px;margin:4px 0">{legend}; red line: the device, '
        f'{result["capacity_bytes"] / GiB:g} GiB</div>'
        f'<div style="font-size:12px">{parts} = {_gib(result["peak_bytes"])}</div>'
        f'<div style="color:{colour};font-weight:bold">{html.escape(result["verdict"])}</div>'
        f'<div style="font-size:11px">peak in phase: {html.escape(result["peak_phase"])}; the head\'s step alone '
        f'{_gib(result["head_only_peak_bytes"])}; full FC stops fitting a 24 GB card above N = '
        f'{result["fc_max_num_classes_24gb"]:,}</div>'
        + (f'<ul style="font-size:11px;margin:2px 0">{notes}</ul>' if notes else "")
    )


def fit_curve(
    embedding_dim: int = 512,
    batch_size: int = 128,
    precision: str = "fp32",
    optimizer: str = "sgd",
    backbone: str | None = "iresnet50",
    container_size: int | None = None,
    max_num_classes: int = MAX_WIDGET_CLASSES,
    points: int = 40,
) -> dict[str, Any]:
    """Predicted peak of one training step against N, for each head (the will-it-fit plot's data).

    Returns 'num_classes' (log-spaced from 10^4 to `max_num_classes`), 'total_bytes' (head name
    -> list of whole-step peaks), 'fc_head_bytes' (the full-FC head's step alone) and
    'fc_limit_24gb' (largest N whose full-FC step fits 24 GiB) for these settings.
    """
    # the curve starts at 10^4 identities; a dataset name stands for its identities
    top = _dataset_size(max_num_classes) or as_int("max_num_classes", max_num_classes, 10_001)
    points = as_int("points", points, 2, 1000)  # two ends at least: the curve divides by points - 1
    container_size = _check_container_size(container_size)
    ns = sorted({int(round(10 ** (4 + (math.log10(top) - 4) * i / (points - 1)))) for i in range(points)})
    common = dict(embedding_dim=as_int("embedding_dim", embedding_dim, 1),
                  batch_size=as_int("batch_size", batch_size, 1),
                  precision=precision_config(precision)["precision"], optimizer=_check_optimizer(optimizer),
                  backbone=_check_backbone(backbone))
    totals = {}
    for kind, label in _HEAD_LABELS.items():
        extra = dict(container_size=container_size) if kind == "attfc" else {}
        totals[label] = [predict_training_step(n, head=kind, **common, **extra).peak for n in ns]
    return {
        "num_classes": ns, "total_bytes": totals, "settings": dict(common, container_size=container_size),
        "fc_head_bytes": [predict_training_step(n, head="fc", **dict(common, backbone=None)).peak for n in ns],
        "fc_limit_24gb": training_step_boundary(int(24 * GiB), head="fc", **common),
    }


def plot_fit_curve(curve: dict[str, Any], result: dict[str, Any] | None = None, ax=None):
    """The will-it-fit plot: whole-step peak (GiB) against N for each head, the full-FC head alone
    (dashed), the 24/40/80 GiB cards (dotted), where full FC leaves the 24 GiB card (x) and, with a
    `fit_verdict` result, the chosen configuration (star)."""
    import matplotlib.pyplot as plt

    curve = _check_result("curve", curve, ("num_classes", "total_bytes", "fc_head_bytes", "fc_limit_24gb",
                                           "settings"), "fit_curve")
    if result is not None:
        result = _check_result("result", result, _VERDICT_KEYS, "fit_verdict")
    ax = ax or plt.subplots(figsize=(7.5, 4))[1]
    ns = curve["num_classes"]
    s = curve["settings"]
    for label, totals in curve["total_bytes"].items():
        ax.plot(ns, [v / GiB for v in totals], lw=1.8, label=f"{label}: whole step")
    ax.plot(ns, [v / GiB for v in curve["fc_head_bytes"]], "--", color="0.35", lw=1.2,
            label="full FC: the head's step alone")
    for gib, colour in zip(CARDS_GIB, ("#b22222", "#ff7f0e", "#7f7f7f")):
        ax.axhline(gib, ls=":", color=colour, lw=1.2, label=f"{gib:g} GB card ({gib:g} GiB)")
    limit = curve["fc_limit_24gb"]
    if limit:
        ax.plot([limit], [24.0], "x", ms=10, mew=2, color="#b22222",
                label=f"full FC leaves the 24 GB card: N = {limit:,}")
    if result is not None:
        ax.plot([result["num_classes"]], [result["peak_bytes"] / GiB], "*", ms=14, color="black",
                label=f"this setting ({_HEAD_LABELS[result['head']]}, N = {result['num_classes']:,}): "
                      f"{_gib(result['peak_bytes'])}")
    ax.set_xscale("log")
    ax.set_xlabel("identities N (log scale)")
    ax.set_ylabel("predicted peak of one training step (GiB)")
    backbone = BACKBONES[s["backbone"]].name if s["backbone"] else "no backbone"
    q = "Q = 0.3 N" if s["container_size"] is None else f"Q = {s['container_size']:,}"
    ax.set_title(f"Will it fit? D = {s['embedding_dim']}, B = {s['batch_size']}, {s['precision']}, "
                 f"{s['optimizer']}, {backbone}, AttFC {q}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    return ax


def will_it_fit_widget(
    num_classes: int = DATASETS["MS1MV3"],
    embedding_dim: int = 512,
    batch_size: int = 128,
    precision: str = "fp32",
    device_gib: float = 24.0,
    head: str = "fc",
    optimizer: str = "sgd",
    backbone: str | None = "iresnet50",
    container_size: int | None = None,
    plot: bool = True,
):
    """The "will it fit?" widget: dataset (follows a typed N), N (up to 10 M), D, B, precision,
    optimizer, head, backbone, AttFC's container (0.3 N or fixed) and the device in; the bar of
    the whole step with the head and the backbone as its parts, the verdict and (with `plot`) the
    memory-against-N plot out.

    Returns an ipywidgets.VBox with extra attributes: `controls` (name -> widget), `output` (the
    HTML widget), `plot_output`, `result` (the last `fit_verdict` dict), `curve` (the last
    `fit_curve`) and `update()`. The callbacks are the plain functions `dataset_for`,
    `fit_verdict`, `verdict_html`, `fit_curve` and `plot_fit_curve`.
    """
    import ipywidgets as w

    # The controls' ranges: a start outside them would be clamped or refused deep inside ipywidgets.
    n0 = resolve_num_classes(num_classes)
    if n0 > MAX_WIDGET_CLASSES:
        raise ArgumentError("num_classes", f"must be at most {MAX_WIDGET_CLASSES:,} in the widget (fit_verdict "
                                           f"takes any N), got {n0:,}")
    embedding_dim = as_choice("embedding_dim", as_int("embedding_dim", embedding_dim, 1), _WIDGET_DIMS)
    batch_size = as_int("batch_size", batch_size, 16, 2048)
    pc = precision_config(precision)
    device_gib = as_choice("device_gib", as_float("device_gib", device_gib, 0, low_open=True), DEVICE_CHOICES_GIB)
    optimizer = _check_optimizer(optimizer, ("sgd", "adam"))
    head = canonical_head(head)
    backbone = _check_backbone(backbone)
    container_size = _check_container_size(container_size, MAX_WIDGET_CLASSES)
    plot = as_bool("plot", plot)
    controls = dict(
        preset=w.Dropdown(options=[("custom", "custom")] + [(f"{k} ({v:,})", k) for k, v in DATASETS.items()],
                          value=dataset_for(n0), description="dataset"),
        num_classes=w.BoundedIntText(value=n0, min=2, max=MAX_WIDGET_CLASSES, step=1000,
                                     description="identities N"),
        embedding_dim=w.Dropdown(options=list(_WIDGET_DIMS), value=embedding_dim, description="dim D"),
        # redrawn once the slider is let go: each value recomputes the whole curve
        batch_size=w.IntSlider(value=batch_size, min=16, max=2048, step=16, description="batch B",
                               continuous_update=False),
        precision=w.Dropdown(options=[(v["label"], k) for k, v in PRECISIONS.items()], value=pc["precision"],
                             description="precision"),
        optimizer=w.Dropdown(options=[(_OPTIMIZER_LABELS[k], k) for k in ("sgd", "adam")],
                             value=optimizer, description="optimizer"),
        head=w.Dropdown(options=[(label, k) for k, label in _HEAD_LABELS.items()], value=head,
                        description="head"),
        backbone=w.Dropdown(options=[(spec.name, k) for k, spec in BACKBONES.items()]
                            + [("none: the head alone", "none")], value=backbone or "none", description="backbone"),
        container=w.Dropdown(options=[("Q = 0.3 N (official configuration)", "ratio"), ("fixed Q", "fixed")],
                             value="ratio" if container_size is None else "fixed", description="AttFC Q"),
        container_size=w.BoundedIntText(value=container_size or 100_000, min=1, max=MAX_WIDGET_CLASSES,
                                        step=1000, description="fixed Q"),
        device_gib=w.Dropdown(options=[(f"{g:g} GB card ({g:g} GiB)", g) for g in DEVICE_CHOICES_GIB],
                              value=device_gib, description="device"),
    )
    output, plot_output = w.HTML(), w.HTML()
    box = w.VBox([w.HBox([controls["preset"], controls["num_classes"], controls["device_gib"]]),
                  w.HBox([controls["embedding_dim"], controls["batch_size"], controls["precision"]]),
                  w.HBox([controls["optimizer"], controls["head"], controls["backbone"]]),
                  w.HBox([controls["container"], controls["container_size"]]), output, plot_output])

    def settings() -> dict[str, Any]:
        c = {k: controls[k].value for k in ("embedding_dim", "batch_size", "precision", "optimizer")}
        c["backbone"] = None if controls["backbone"].value == "none" else controls["backbone"].value
        c["container_size"] = controls["container_size"].value if controls["container"].value == "fixed" else None
        return c

    def update(*_: Any) -> None:
        c = settings()
        head = controls["head"].value  # the fixed Q is AttFC's: the other heads are refused it
        box.result = fit_verdict(controls["num_classes"].value, c["embedding_dim"], c["batch_size"], c["precision"],
                                 controls["device_gib"].value, head, c["optimizer"], c["backbone"],
                                 c["container_size"] if head == "attfc" else None)
        output.value = verdict_html(box.result)
        if plot:
            import matplotlib.pyplot as plt

            box.curve = fit_curve(**c)
            plot_fit_curve(box.curve, box.result)
            plot_output.value = figure_html(plt.gcf())

    def on_preset(change: dict) -> None:
        if change["new"] in DATASETS:
            controls["num_classes"].value = DATASETS[change["new"]]

    def on_num_classes(change: dict) -> None:
        controls["preset"].value = dataset_for(change["new"])  # the menu follows a typed N
        update()

    controls["preset"].observe(on_preset, names="value")
    controls["num_classes"].observe(on_num_classes, names="value")
    for name, control in controls.items():
        if name not in ("preset", "num_classes"):
            control.observe(update, names="value")
    box.controls, box.output, box.plot_output, box.update = controls, output, plot_output, update
    box.curve = None
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
    from .attfc import container_capacity

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
        from .sweep import load_sweep

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
