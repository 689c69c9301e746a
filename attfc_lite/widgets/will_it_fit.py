"""The "will it fit?" widget (lesson 02): one training step's predicted peak against a device, and against N."""
from __future__ import annotations

import html
import math
from typing import Any

from ..checks import ArgumentError, as_bool, as_choice, as_float, as_int
from ..memory import (
    BACKBONES,
    DATASETS,
    OPTIMIZERS,
    PRECISIONS,
    STEP_TERMS,
    GiB,
    _TERM_COLOURS,
    canonical_head,
    precision_config,
    predict_training_step,
    training_step_boundary,
)
from .common import _check_result, _dataset_size, figure_html, resolve_num_classes

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


def dataset_for(num_classes: int) -> str:
    """The dataset menu's entry for a typed N: the name in `DATASETS` with exactly N identities, else 'custom'."""
    return next((name for name, n in DATASETS.items() if n == num_classes), "custom")


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
