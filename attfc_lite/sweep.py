"""Sweeps: one training setting over several values and seeds, stored as JSON with what made it (lessons 03-05, 07, 09).

    python -m attfc_lite sweep ema-momentum --values 0.9 0.99 0.999 --seeds 0 1 --out data/sweeps/ema_momentum.json

`run_sweep` trains one run per (value, seed) with everything else from one `TrainConfig`,
and writes a JSON file with the settings, the device, the torch version, the date and the
command that regenerates it, every run's verification figures, and a summary per value
(means over the seeds with their spread: accuracy, TAR@FAR, AUC). TAR@FAR and AUC rest on every
pair of the evaluation set (`tar_protocol`; each run keeps its pair counts). The lessons read
stored sweeps (`load_sweep`, `plot_sweep`) and say which command made them; the same command
serves the ablations.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence


from .train import TrainConfig, train
from .checks import ArgumentError, as_float, as_int
from .utils import WriteFailed, check_output, provenance, read_stored, write_json
from .verification import ALL_PAIRS_PROTOCOL, over_seeds

__all__ = ["PARAMS", "DEFAULT_VALUES", "run_sweep", "load_sweep", "plot_sweep", "summarise", "head_memory_of",
           "plot_accuracy_memory"]

#: The settings a sweep can vary: command-line name -> TrainConfig field.
PARAMS: dict[str, str] = {
    "dcc-ratio": "dcc_ratio",
    "k": "num_keys",
    "ema-momentum": "ema_momentum",
    "sample-rate": "sample_rate",
    "temperature": "temperature",
    "epochs": "epochs",
    "classes": "num_classes",
}
#: The head each setting belongs to (the sweep trains that head).
HEAD_OF: dict[str, str] = {"dcc-ratio": "attfc", "k": "attfc", "ema-momentum": "attfc", "temperature": "attfc",
                           "sample-rate": "partial_fc"}
DEFAULT_VALUES: dict[str, tuple] = {
    "dcc-ratio": (0.01, 0.03, 0.1, 0.3, 0.6, 1.0),
    "k": (1, 2, 3, 4),
    "ema-momentum": (0.9, 0.99, 0.999),
    "sample-rate": (0.02, 0.1, 0.3, 1.0),
    "temperature": (0.25, 1.0, 4.0),
    "epochs": (3, 6, 12),
}
_INT_FIELDS = {"num_keys", "epochs", "num_classes"}


def _field(param: str) -> str:
    if param not in PARAMS:
        raise ValueError(f"param must be one of {sorted(PARAMS)}, got {param!r}")
    return PARAMS[param]


def _cast(field: str, value: Any) -> Any:
    """A sweep value as its field's type: whole numbers stay exact, floats must be finite."""
    if field in _INT_FIELDS:
        return as_int(f"values (of {field})", value)
    return as_float(f"values (of {field})", value)


def summarise(runs: Sequence[dict]) -> list[dict]:
    """Per value: means over seeds and their spread (`verification.over_seeds`: accuracy, TAR@FAR,
    AUC), the mean spread of the folds, images/s, and the container's size where there is one."""
    out = []
    for value in dict.fromkeys(r["value"] for r in runs):
        group = [r for r in runs if r["value"] == value]
        out.append({
            "value": value, "seeds": [r["seed"] for r in group], **over_seeds(group),
            "accuracy_fold_std": statistics.fmean(r["accuracy_std"] for r in group),
            "images_per_second": statistics.fmean(r["images_per_second"] for r in group),
            **({"container_capacity": group[0]["head_settings"]["container_capacity"]}
               if "container_capacity" in group[0]["head_settings"] else {}),
        })
    return out


def run_sweep(param: str, values: Sequence | None = None, seeds: Sequence[int] = (0, 1),
              base: TrainConfig | None = None, out: str | os.PathLike | None = None, progress: bool = True,
              command: str | None = None, on_run: Callable[[dict], None] | None = None,
              overwrite: bool = False) -> dict:
    """Train one run per (value, seed) of `param` (a key of PARAMS); return (and write to `out`) the sweep.

    Every value, and `out`, is checked before the first run starts, so a bad one fails at once.
    An existing `out` is refused unless `overwrite=True`; it is replaced only when the sweep
    finishes (one atomic write), so a failed or interrupted sweep leaves it as it was.
    """
    if out is not None:
        out = check_output(out, "out", "file", overwrite=overwrite, holds="results")
    field = _field(param)
    values = list(DEFAULT_VALUES.get(param, ())) if values is None else list(values)
    if not values:
        raise ValueError(f"values is empty; give at least one value of {param}")
    seeds = [as_int("seeds", s, 0, 2 ** 32 - 1) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    base = base or TrainConfig(head=HEAD_OF.get(param, "attfc"))
    configs = []
    for v in values:
        for s in seeds:
            try:
                configs.append((v, s, replace(base, **{field: _cast(field, v), "seed": s}).validate()))
            except ArgumentError as exc:
                if exc.name != field:
                    raise
                raise ArgumentError("values", f"hold {v!r}, which {param} cannot take: {exc}") from None
    from tqdm.auto import tqdm

    runs = []
    started = time.perf_counter()
    for value, seed, config in tqdm(configs, desc=f"sweep {param}", unit="run", disable=not progress):
        m = train(config, progress=False).metrics
        v = m["verification"]
        run = {"value": _cast(field, value), "seed": seed, "accuracy_mean": v["accuracy_mean"],
               "accuracy_std": v["accuracy_std"], "tar_at_far": v["tar_at_far"], "far_achieved": v["far_achieved"],
               "auc": v["auc"], "num_pairs_all": {"genuine": v["num_genuine_all"], "impostor": v["num_impostor_all"]},
               "impostors_accepted": v["impostors_accepted"], "seconds": m["seconds"],
               "images_per_second": m["images_per_second"], "final_loss": m["final_loss"],
               "head_settings": m["head_settings"]}
        runs.append(run)
        if on_run is not None:
            on_run(run)
    result = {
        "param": param, "field": field, "values": [_cast(field, v) for v in values], "seeds": seeds,
        "config": {k: v for k, v in asdict(base).items() if k not in ("seed", field)},
        **provenance(configs[0][2].device), "seconds": round(time.perf_counter() - started, 1),
        "command": command, "tar_protocol": ALL_PAIRS_PROTOCOL, "runs": runs, "summary": summarise(runs),
    }
    if out is not None:
        try:
            write_json(out, result, "the sweep's result is not lost: it is kept in the error's `result` (the "
                                    "command line prints it on standard output; redirect it to a file)")
        except WriteFailed as exc:
            exc.result = result
            raise
    return result


STORED = Path(__file__).resolve().parents[1] / "data" / "sweeps"  # the course's stored sweeps


def load_sweep(path: str | os.PathLike) -> dict:
    """A sweep written by `run_sweep`: a file, or the name of a stored one ("dcc_ratio" for
    data/sweeps/dcc_ratio.json). Checks that it has the fields the lessons read."""
    return read_stored(path, STORED, {"param", "values", "seeds", "runs", "summary", "config", "device", "command"},
                       "python -m attfc_lite sweep ...")


def _metric(metric: str, sweep: dict) -> tuple[Callable[[dict], float], Callable[[dict], float], str]:
    """Readers of one figure from a run, and of its seed spread from a summary row, and its axis label."""
    if metric == "accuracy":
        return (lambda r: r["accuracy_mean"]), (lambda r: r["accuracy_seed_std"]), "10-fold verification accuracy"
    fars = list(sweep["runs"][0]["tar_at_far"])
    if metric not in fars:
        raise ArgumentError("metric", f"is {metric!r}; give 'accuracy' or a FAR this sweep reports: {fars}")
    if "tar_at_far_seed_std" not in sweep["summary"][0]:
        raise ArgumentError("sweep", "was stored before sweeps kept TAR over seeds; re-run its command")
    return ((lambda r: r["tar_at_far"][metric] or 0.0), (lambda r: r["tar_at_far_seed_std"][metric]),
            f"TAR at FAR = {metric} (all pairs)")


def plot_sweep(sweep: dict, ax=None, log_x: bool = False, reference: float | None = None,
               reference_label: str = "full FC", xlabel: str | None = None, metric: str = "accuracy"):
    """Mean over seeds against the swept value; bars: the spread over seeds, dots: each run.

    `metric`: 'accuracy' (10-fold) or a FAR key of the sweep ('1e-2', ...) for the TAR there."""
    import matplotlib.pyplot as plt

    of_run, of_spread, ylabel = _metric(metric, sweep)
    summary = sweep["summary"]
    ax = ax or plt.subplots(figsize=(5, 3.4))[1]
    xs = [s["value"] for s in summary]
    ax.errorbar(xs, [of_run(s) for s in summary], yerr=[of_spread(s) for s in summary],
                fmt="o-", capsize=3, label=f"mean over {len(sweep['seeds'])} seed(s) ± their std")
    ax.plot([r["value"] for r in sweep["runs"]], [of_run(r) for r in sweep["runs"]], ".", color="0.3",
            label="one run", zorder=4)  # above the error bars, whose caps sit on the runs with two seeds
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label=f"{reference_label}: {reference:.3f}")
    xlabel = xlabel or sweep["param"]
    if log_x:
        ax.set_xscale("log")
        if "log scale" not in xlabel:  # say so once, also where the caller's label already does
            xlabel += " (log scale)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"sweep of {sweep['param']} ({sweep['device']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def head_memory_of(sweep: dict, value, num_classes: int | None = None) -> int:
    """Predicted peak bytes of one head step (the memory model) for the sweep's configuration with
    its setting at `value`, at the sweep's number of identities or at `num_classes`."""
    from .memory import predict_memory
    from .train import memory_knobs

    config = TrainConfig.from_dict({**sweep["config"], sweep["field"]: value})
    n = int(num_classes or config.num_classes)
    return predict_memory(n, config.embedding_dim, config.batch_size, head=config.head, **memory_knobs(config)).peak


def plot_accuracy_memory(sweep: dict, num_classes: int | None = None, ax=None, label: str | None = None):
    """The ablation's trade-off: mean accuracy over seeds (± their std) against the head step's
    predicted memory, each point labelled with its value. `num_classes` sizes the memory at
    another N than the sweep's (the accuracy stays the sweep's own)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    rows = sorted(sweep["summary"], key=lambda r: r["value"])
    xs = [head_memory_of(sweep, r["value"], num_classes) / 2 ** 20 for r in rows]
    ax.errorbar(xs, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_seed_std"] for r in rows], fmt="o-",
                capsize=3, label=label or f"{sweep['param']} ({len(sweep['seeds'])} seeds ± std)")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['value']:g}", (x, r["accuracy_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    n = int(num_classes or sweep["config"]["num_classes"])
    ax.set_xlabel(f"head step peak at N = {n:,} (MiB, memory model)")
    ax.set_ylabel("10-fold verification accuracy")
    ax.set_title(f"accuracy against head memory: {sweep['param']} ({sweep['device']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
