"""The model against the measurement: `memory_report` (predicted and measured bytes of one head step,
as JSON-safe numbers), `agreement_table` over several N, and `format_agreement` as text (lessons 02-03)."""
from __future__ import annotations

import gc
import math
from typing import Any, Callable, Mapping, Sequence

from ..checks import ArgumentError, as_bool, as_device, as_int
from . import guard
from .head_measure import _MODEL_KNOBS, _device, _sizes_text, build_head, measure_head_step
from .head_model import _unit_scale, predict_memory


def memory_report(
    head: str = "fc",
    num_classes: int | None = None,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str | None = None,
    measure: bool = True,
    max_share: float | None = None,
    **head_kwargs: Any,
) -> dict[str, Any]:
    """Predicted and measured memory of one head step, as one JSON-serialisable dict.

    Keys: the configuration, `predicted` (named byte counts with `held`, `step_peak`,
    `peak`), `predicted_peak_phase`, `formulas`, `measured_peak_bytes` (held + step peak),
    `measured_step_peak_bytes`, `measured_held_bytes`, `measured_reserved_peak_bytes` (CUDA:
    the caching allocator's reserved peak, what an out-of-memory is raised against; None on
    the CPU), `relative_error` of the peak and `step_relative_error`, `step_seconds`, `method`.
    With `measure=False` the measured entries are None. No value is nan or inf (a ratio that
    cannot be formed is None): `json.dumps(report, allow_nan=False)` holds. `head_kwargs` go to
    the head (e.g. margin) and to the model (sample_rate, container_size, num_keys,
    backbone_params, momentum, weight_decay).

    Before measuring, the predicted peak is compared with the device's available memory
    (`guard.check_fits`): past `max_share` of it (by default `SAFE_SHARE`: three quarters on the
    CPU, nine tenths on CUDA) a ValueError says how much is needed and available, and nothing
    is allocated.
    """
    if num_classes is None:
        raise ArgumentError("num_classes", "is required: the number of identities N, e.g. num_classes=100000")
    measure = as_bool("measure", measure)
    max_share = guard.check_share(max_share)
    model_kwargs = {k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS}
    pred = predict_memory(num_classes, embedding_dim, batch_size, dtype, optimizer, head, **model_kwargs)
    cfg = pred.config
    dev = _device(device) if measure else (None if device is None else as_device("device", device))
    report: dict[str, Any] = dict(cfg)
    report.update(
        predicted=pred.as_dict(), predicted_peak_phase=pred.peak_phase, formulas=pred.formulas,
        device=None, measured_peak_bytes=None, measured_step_peak_bytes=None, measured_held_bytes=None,
        measured_phase_peaks=None, measured_reserved_peak_bytes=None, relative_error=None, step_relative_error=None, step_seconds=None,
        method=None, steady_state=None,
    )
    if not measure:
        return _json_safe(report)
    advice = "Pass measure=False (--no-measure) for the prediction alone."
    guard.check_fits(pred.peak, dev, None, _sizes_text(pred, cfg["head"]), advice, max_share=max_share)
    if dev.type != "cpu":  # the head is built in fp32 on the CPU first, then moved
        sym = pred.symbols
        built_bytes = (sym["R"] + sym["Q"]) * sym["D"] * 4 + 8 * sym["Q"]
        guard.check_fits(built_bytes, "cpu", None,
                         f"building the head on the CPU ({_sizes_text(pred, cfg['head'])})", advice,
                         max_share=max_share)
    # the checked values (1e6 as 1000000), so the head is built with what was predicted
    built = build_head(head, cfg["num_classes"], cfg["embedding_dim"], dtype, **head_kwargs)
    opt_kwargs = {k: cfg[k] for k in ("momentum", "weight_decay")}
    meas = measure_head_step(built, cfg["batch_size"], cfg["optimizer"], dev, max_share=max_share, **opt_kwargs)
    del built
    gc.collect()
    report.update(
        device=meas.device,
        measured_peak_bytes=meas.peak_bytes,
        measured_step_peak_bytes=meas.step_peak_bytes,
        measured_held_bytes=meas.held_bytes,
        measured_phase_peaks=meas.phase_peaks,
        measured_reserved_peak_bytes=meas.reserved_peak_bytes,
        # None, not a division by zero, when a measurement saw nothing
        relative_error=(pred.peak - meas.peak_bytes) / meas.peak_bytes if meas.peak_bytes else None,
        step_relative_error=(pred.step_peak - meas.step_peak_bytes) / max(meas.step_peak_bytes, 1),
        step_seconds=meas.step_seconds,
        method=meas.method,
        steady_state=meas.steady_state,
    )
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """`value` with every nan or inf float replaced by None: JSON has no such numbers
    (json.dumps would write the invalid token NaN), and a ratio that cannot be formed is unknown."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def agreement_table(
    num_classes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000),
    embedding_dim: int = 512,
    batch_size: int = 128,
    head: str = "fc",
    device: str | None = "cpu",
    progress: Callable[[dict], None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Predicted vs measured peak for each N, one `memory_report` per row (run one at a time).

    Every N is checked first, the fit on the device included (`guard.check_fits`): a size that
    cannot be measured stops the table before the first measurement, not after the others."""
    if isinstance(num_classes, (str, bytes)) or not hasattr(num_classes, "__iter__"):
        raise ArgumentError("num_classes", f"must be a sequence of whole numbers >= 2, got {num_classes!r}")
    sizes = [as_int("num_classes", n, 2) for n in num_classes]
    if not sizes:
        raise ArgumentError("num_classes", "must hold at least one number of identities, got an empty sequence")
    if progress is not None and not callable(progress):
        raise ArgumentError("progress", f"must be a callable taking a row dict, or None, got {progress!r}")
    dev = _device(device)
    model_kwargs = {k: v for k, v in kwargs.items() if k in _MODEL_KNOBS or k in ("dtype", "optimizer")}
    for n in sizes:
        pred = predict_memory(n, embedding_dim, batch_size, head=head, **model_kwargs)
        guard.check_fits(pred.peak, dev, None, _sizes_text(pred, pred.config["head"]),
                         "Drop it from num_classes, or use predict_memory for the prediction alone.")
    rows = []
    for n in sizes:
        r = memory_report(head, n, embedding_dim, batch_size, device=dev, **kwargs)
        row = dict(
            num_classes=int(n), predicted_peak=r["predicted"]["peak"], measured_peak=r["measured_peak_bytes"],
            error=r["relative_error"], predicted_step_peak=r["predicted"]["step_peak"],
            measured_step_peak=r["measured_step_peak_bytes"], step_error=r["step_relative_error"],
            step_seconds=r["step_seconds"], device=r["device"],
        )
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def format_agreement(rows: Sequence[Mapping[str, Any]], unit: str = "MiB", digits: int = 1) -> str:
    """The agreement table as text: N, predicted and measured peak, relative error (also of the step alone)."""
    scale = _unit_scale(unit)
    digits = as_int("digits", digits, 0, 12)
    head = (f"{'N':>10} {'predicted ' + unit:>16} {'measured ' + unit:>15} {'error':>8}   "
            f"{'step pred.':>11} {'step meas.':>11} {'error':>8}")
    lines = [head]

    def error(v: float | None) -> str:  # None: a measurement that saw nothing, no ratio
        return f"{v:>+8.1%}" if v is not None else f"{'-':>8}"

    for r in rows:
        lines.append(
            f"{r['num_classes']:>10,} {r['predicted_peak'] / scale:>16,.{digits}f} {r['measured_peak'] / scale:>15,.{digits}f} "
            f"{error(r['error'])}   {r['predicted_step_peak'] / scale:>11,.{digits}f} "
            f"{r['measured_step_peak'] / scale:>11,.{digits}f} {error(r['step_error'])}"
        )
    return "\n".join(lines)
