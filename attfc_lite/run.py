"""Heads side by side: the same data, backbone and steps for each head, one after the other (lessons 08-09).

    python -m attfc_lite run --variants fc partial_fc attfc dcq --seeds 0 1 --out data/runs/heads_cpu

`run_heads` trains one run per (variant, seed) with everything else from one `TrainConfig`
and records, per run, the verification figures and ROC curve, the training loss every few
steps, images per second, and the measured memory of one head step at the run's shapes and
at a larger number of identities (the head alone: embeddings in, loss, backward, optimizer
step); and, per head, one whole training step measured with its timeline (backbone, key
encoder, head, optimizer). The folder it writes holds summary.json (the settings, the device,
the torch version, the date, the command and every figure), summary.png, and per head the
metrics of each seed and the step's memory; lessons 07 and 08 read data/runs/heads_cpu.

A variant is a head with settings: 'dcq' is AttFC with K = 1, the key image itself as the
class centre (no attention), the choice of DCQ (Li et al., CVPR 2021), AttFC's ancestor.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence


from .train import TrainConfig, train
from .checks import ArgumentError, as_int
from .utils import (check_output, holds_results, provenance, read_stored, replace_folder, save_figure, staging_path,
                    write_json)

__all__ = ["VARIANTS", "PROFILES", "resolve_profile", "profile_config", "run_heads", "load_run", "summary_table",
           "plot_losses", "plot_rocs", "plot_summary", "STORED"]

#: Name -> (label, the TrainConfig fields that make it).
VARIANTS: dict[str, tuple[str, dict]] = {
    "fc": ("full FC", {"head": "fc"}),
    "partial_fc": ("Partial FC", {"head": "partial_fc"}),
    "attfc": ("AttFC", {"head": "attfc"}),
    "dcq": ("DCQ-style (AttFC, K = 1)", {"head": "attfc", "num_keys": 1}),
}
#: Name -> the TrainConfig fields that differ from its defaults; 'auto' picks 'gpu' when CUDA is present.
PROFILES: dict[str, dict] = {
    # The lessons' configuration: 1,000 identities x 16 images of 32 pixels, the small ResNet, six
    # epochs; the four heads in about 5 minutes on two CPU cores.
    "cpu": {},
    # The single-GPU run: 100,000 identities of 112-pixel faces, rendered batch by batch on the GPU
    # (the data set holds only labels), a torchvision ResNet-18 in bfloat16 autocast and
    # channels-last, D = 512, B = 512, one epoch. Few images per identity, as in large face data
    # sets: each class centre of W is updated only a few times. A CPU run of this shape (20,000
    # identities x 4 images, one epoch, 32 px) gave FC 0.668 and AttFC 0.829 with K = 2 as with
    # K = 4, so K = 2, the paper's, which embeds half the key images.
    # Keys other than the query: with the official sampler 56 % of the queries would get a key that
    # is the query image itself at 3 images per identity, and on the CPU's large-N run (2 images per
    # identity) drawing them among the other images lifted AttFC's accuracy (lesson 09).
    "gpu": dict(num_classes=100_000, images_per_identity=3, eval_identities=1_000, image_size=112,
                backbone="resnet18", embedding_dim=512, batch_size=512, epochs=1, warmup_epochs=0.1, num_keys=2,
                keys_exclude_query=True, amp=True, channels_last=True, stream_data=True),
}
#: Per profile: the N at which `run` also measures each head's step alone.
PROFILE_MEMORY_CLASSES = {"cpu": 100_000, "gpu": 1_000_000}
#: The heads `run` trains by default: on the GPU the three of the paper (DCQ-style is lesson 08's).
PROFILE_VARIANTS = {"cpu": ["fc", "partial_fc", "attfc", "dcq"], "gpu": ["fc", "partial_fc", "attfc"]}
LOSS_EVERY = 10  # steps per point of the stored loss curve (the mean over them)
STORED = Path(__file__).resolve().parents[1] / "data" / "runs"  # the course's stored runs


def resolve_profile(profile: str = "auto", amp: bool | None = None) -> str:
    """'cpu' or 'gpu': the name itself, or for 'auto' 'gpu' when CUDA is present, else 'cpu'.
    `amp=False` says the profile's autocast is turned off, so a CUDA profile may run on the CPU."""
    import torch

    if profile == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ArgumentError("profile", f"must be 'auto' or one of {sorted(PROFILES)}, got {profile!r}")
    if PROFILES[profile].get("amp") and amp is not False and not torch.cuda.is_available():
        raise ArgumentError("profile", f"{profile!r} needs a CUDA device (bfloat16 autocast) and there is none: use "
                                       f"profile 'cpu' (or 'auto'), or turn its autocast off (--no-amp, or "
                                       f"profile_config({profile!r}, amp=False, device='cpu')) to run it on the CPU")
    return profile


def profile_config(profile: str = "auto", **overrides) -> TrainConfig:
    """The TrainConfig of a profile ('auto', 'cpu' or 'gpu') with `overrides` (TrainConfig fields) on
    top; `profile_config('gpu', amp=False, device='cpu')` builds the GPU profile's shapes on a CPU."""
    unknown = sorted(set(overrides) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"overrides must be TrainConfig fields, got {unknown}")
    name = profile if profile in PROFILES and overrides.get("amp") is False else resolve_profile(profile)
    return replace(TrainConfig(), **{**PROFILES[name], **overrides}).validate()


def _check_variants(variants: Sequence[str]) -> list[str]:
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be some of {list(VARIANTS)}, got {variants}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants has repeats: {variants}")
    return variants


def head_memory(config: TrainConfig, num_classes: int | None = None) -> dict[str, Any]:
    """Measured and predicted peak of one head step (SGD with the run's momentum) for `config`'s
    head at its shapes, or at `num_classes` identities (the container keeps its ratio)."""
    from .memory import memory_report
    from .train import memory_knobs

    n = int(num_classes or config.num_classes)
    report = memory_report(config.head, n, config.embedding_dim, config.batch_size,
                           device=None if config.device == "auto" else config.device, **memory_knobs(config))
    return {"num_classes": n, "measured_peak_bytes": report["measured_peak_bytes"],
            "predicted_peak_bytes": report["predicted"]["peak"], "step_seconds": report["step_seconds"]}


def _round(values: Sequence[float], digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in values]


# what run_heads (and large_n.write_large_n, for the command's --large-n-mib) write at the top of their
# folder, beside a folder per head
RUN_OUTPUTS = ("summary.json", "summary.png", "large_n.json", "large_n.png")


def run_heads(variants: Sequence[str] = tuple(VARIANTS), seeds: Sequence[int] = (0,), base: TrainConfig | None = None,
              memory_classes: int | None = 100_000, out: str | os.PathLike | None = None, progress: bool = True,
              command: str | None = None, on_run: Callable[[dict], None] | None = None,
              step_memory: bool = True, on_epoch: Callable[[dict], None] | None = None,
              overwrite: bool = False) -> dict:
    """Train every variant for every seed on `base`'s data; return the results, and with `out` (a
    folder) write them: summary.json and summary.png, and per variant seed_<s>/metrics.json (what
    `train` records) and step_memory.json (one whole training step measured).

    `memory_classes`: also measure each head's step alone at this many identities (None: skip).
    `step_memory`: measure one whole training step per variant (backbone, key encoder, head,
    optimizer; `memory.step.measure_model_step`), kept with a thinned timeline.
    `on_run(run)` after each run and `on_epoch({variant, seed, epoch, epochs, loss})` after each
    epoch report progress (the command line prints them when its bars are off).
    A folder `out` that holds results is refused unless `overwrite=True`; the new results are
    then written to `<out>.new` and take its place only when every run has finished.
    """
    from .memory.step import measure_model_step, thin_timeline

    variants = _check_variants(variants)
    seeds = [as_int("seeds", s, 0, 2 ** 32 - 1) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    base = base or TrainConfig()
    configs = [(v, s, replace(base, **VARIANTS[v][1], seed=s).validate()) for v in variants for s in seeds]
    if memory_classes is not None:  # measured after training: checked now that it can be
        memory_classes = as_int("memory_classes", memory_classes, 2)
        from .memory import predict_memory
        from .memory.guard import check_fits
        from .train import memory_knobs
        from .utils import default_device

        for _, _, config in configs:
            need = predict_memory(memory_classes, config.embedding_dim, config.batch_size, head=config.head,
                                  **memory_knobs(config)).peak
            check_fits(need, default_device(config.device), "memory_classes",
                       f"one {config.head} head step at N = {memory_classes:,}",
                       "Give a smaller memory_classes (--memory-classes).")
    final = out = Path(out) if out is not None else None
    if out is not None and out.suffix:
        raise ArgumentError("out", f"is a folder (it gets summary.json, summary.png and one folder per head), "
                                   f"got {out}")
    if out is not None:
        out = results_folder(out, overwrite)
    from tqdm.auto import tqdm

    runs, steps, started = [], {}, time.perf_counter()
    for i, (variant, seed, config) in enumerate(configs):
        if progress:
            tqdm.write(f"[{i + 1}/{len(configs)}] {VARIANTS[variant][0]}, seed {seed}")
        losses: list[float] = []
        epoch_losses: dict[int, list[float]] = {}

        def report(epoch: int) -> None:
            if on_epoch is not None and epoch in epoch_losses:
                on_epoch({"variant": variant, "seed": seed, "epoch": epoch + 1, "epochs": config.epochs,
                          "loss": statistics.fmean(epoch_losses[epoch])})

        def watch(state: dict) -> None:
            losses.append(state["loss"])
            if state["epoch"] not in epoch_losses:
                report(state["epoch"] - 1)
            epoch_losses.setdefault(state["epoch"], []).append(state["loss"])

        result = train(config, progress=progress, callback=watch)
        report(max(epoch_losses, default=-1))
        m, v = result.metrics, result.metrics["verification"]
        del result
        if out is not None:
            write_json(out / variant / f"seed_{seed}" / "metrics.json", m)
        curve = [statistics.fmean(losses[i:i + LOSS_EVERY]) for i in range(0, len(losses), LOSS_EVERY)]
        run = {"variant": variant, "head": config.head, "seed": seed, "accuracy_mean": v["accuracy_mean"],
               "accuracy_std": v["accuracy_std"], "auc": v["auc"], "tar_at_far": v["tar_at_far"],
               "far_achieved": v["far_achieved"], "images_per_second": m["images_per_second"],
               "seconds": m["seconds"], "steps": m["steps"], "final_loss": m["final_loss"],
               "head_settings": m["head_settings"],
               "loss_curve": {"every": LOSS_EVERY, "loss": _round(curve, 4)},
               "num_pairs_all": {"genuine": v.get("num_genuine_all"), "impostor": v.get("num_impostor_all")},
               "roc": stored_roc(v["roc"])}
        if seed == seeds[0]:  # memory does not depend on the seed
            run["head_memory"] = [head_memory(config)] + ([head_memory(config, memory_classes)]
                                                          if memory_classes else [])
            if step_memory:
                steps[variant] = thin_timeline(measure_model_step(config, amp=config.amp))
                if out is not None:
                    write_json(out / variant / "step_memory.json", steps[variant])
        runs.append(run)
        if on_run is not None:
            on_run(run)
    result = {
        # what each head used: its own options (config below also lists the fields no head here reads)
        "variants": {v: {"label": VARIANTS[v][0], **VARIANTS[v][1],
                         "head_settings": {k: val for k, val in next(r for r in runs if r["variant"] == v)[
                             "head_settings"].items() if k != "seed"}} for v in variants}, "seeds": seeds,
        "config": {k: val for k, val in asdict(base).items() if k != "seed"}, **provenance(configs[0][2].device),
        "seconds": round(time.perf_counter() - started, 1), "command": command, "runs": runs,
        "summary": summarise(runs), "step_memory": steps,
    }
    if out is not None:
        write_results(out, final, "summary", result, plot_summary)
    return result


def write_results(out: Path, final: Path, stem: str, result: dict, plot: Callable[[dict], Any]) -> None:
    """`result` as out/<stem>.json and its figure `plot(result)` as out/<stem>.png; then, if `out`
    is a staging folder (`results_folder`), it takes the place of `final`."""
    import matplotlib.pyplot as plt

    kept = "the runs' own files under it are kept" + (f"; the earlier results in {final} are unchanged"
                                                      if out != final else "")
    write_json(out / f"{stem}.json", result, kept)
    fig = plot(result)
    try:
        save_figure(fig, out / f"{stem}.png", kept, dpi=100)
    finally:
        plt.close(fig)
    if out != final:
        replace_folder(out, final)


def stored_roc(roc: dict) -> dict:
    """A ROC curve as the stored results keep it: FARs to 4 significant digits (with millions of
    impostor pairs they reach 1e-7), TARs to 5 decimals."""
    return {"fpr": [float(f"{f:.4g}") for f in roc["fpr"]], "tpr": _round(roc["tpr"], 5)}


def summarise(runs: Sequence[dict]) -> list[dict]:
    """Per variant: means over seeds with their spread (`verification.over_seeds`), images/s and the head memory."""
    from .verification import over_seeds

    out = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        group = [r for r in runs if r["variant"] == variant]
        out.append({"variant": variant, "seeds": [r["seed"] for r in group], **over_seeds(group),
                    "images_per_second": statistics.fmean(r["images_per_second"] for r in group),
                    "head_memory": next((r["head_memory"] for r in group if "head_memory" in r), None)})
    return out


def results_folder(out: Path, overwrite: bool) -> Path:
    """Where to write the results of `run` into the folder `out`: `out` itself, or with
    `overwrite` a staging folder beside it that replaces it once complete (`replace_folder`).
    A folder holding results, or files `run` does not write, is refused (`utils.check_output`)."""
    check_output(out, "out", "folder", overwrite=overwrite, holds="results",
                 own=lambda e: (e.name in VARIANTS and e.is_dir()) or e.name in RUN_OUTPUTS or e.name.endswith(".tmp"))
    return staging_path(out, "out") if holds_results(out) else out


def stored_file(path: str | os.PathLike, name: str) -> Path:
    """`path` if it is a file, `path/name` for a folder, or `data/runs/<path>/name` for the name of
    a stored run ("heads_cpu")."""
    path = Path(path)
    if path.is_dir() or (not path.suffix and (STORED / path.name).is_dir()):
        path = (path if path.is_dir() else STORED / path.name) / name
    return path


def load_run(path: str | os.PathLike) -> dict:
    """What `run_heads` wrote: its folder, its summary.json, or the name of a stored one
    ("heads_cpu": data/runs/heads_cpu/summary.json)."""
    return read_stored(stored_file(path, "summary.json"), STORED,
                       {"variants", "seeds", "runs", "summary", "config", "device", "command"}, "python -m attfc_lite run")


def summary_table(result: dict) -> str:
    """One line per variant: accuracy (± seed spread), TAR@FAR, images/s and measured head memory."""
    fars = list(result["summary"][0]["tar_at_far"])
    sizes = [m["num_classes"] for m in result["summary"][0]["head_memory"] or []]
    head = f"{'':<27}{'accuracy':>16}" + "".join(f"{'TAR@' + k:>10}" for k in fars) + f"{'images/s':>10}"
    head += "".join(f"{'head MiB N=' + format(n, ','):>20}" for n in sizes)
    lines = [head]
    for row in result["summary"]:
        line = f"{result['variants'][row['variant']]['label']:<27}"
        line += (f"{row['accuracy_mean']:>9.3f} ± {row['accuracy_seed_std']:.3f}" if len(row["seeds"]) > 1
                 else f"{row['accuracy_mean']:>9.3f} (1 seed)")
        line += "".join(f"{row['tar_at_far'][k]:>10.3f}" for k in fars) + f"{row['images_per_second']:>10,.0f}"
        line += "".join(f"{m['measured_peak_bytes'] / 2 ** 20:>20,.2f}" for m in row["head_memory"] or [])
        lines.append(line)
    return "\n".join(lines)


def plot_losses(result: dict, ax=None):
    """Training loss against step, per variant (mean over seeds)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
    for variant, spec in result["variants"].items():
        curves = [r["loss_curve"] for r in result["runs"] if r["variant"] == variant]
        n = min(len(c["loss"]) for c in curves)
        mean = [statistics.fmean(c["loss"][i] for c in curves) for i in range(n)]
        every = curves[0]["every"]
        ax.plot([every * (i + 0.5) for i in range(n)], mean, lw=1.2, label=spec["label"])
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean of {result['runs'][0]['loss_curve']['every']} steps)")
    ax.set_title("loss curves (each head's own loss: not comparable across heads)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_rocs(result: dict, seed: int | None = None, ax=None):
    """ROC curves (TAR against FAR, log FAR) of one seed's run of each variant."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
    seed = result["seeds"][0] if seed is None else seed
    for variant, spec in result["variants"].items():
        run = next(r for r in result["runs"] if r["variant"] == variant and r["seed"] == seed)
        fpr, tpr = run["roc"]["fpr"], run["roc"]["tpr"]
        keep = [i for i, f in enumerate(fpr) if f > 0]
        ax.plot([fpr[i] for i in keep], [tpr[i] for i in keep], lw=1.2,
                label=f"{spec['label']} (AUC {run['auc']:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate (FAR), impostor pairs accepted")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(f"ROC on unseen identities (seed {seed})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_summary(result: dict):
    """One figure of a run: accuracy per head, whole-step memory timelines, ROC curves, loss curves."""
    import matplotlib.pyplot as plt

    from .memory.step import plot_step_timelines

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    ax = axes[0][0]
    labels = [result["variants"][r["variant"]]["label"] for r in result["summary"]]
    several = len(result["seeds"]) > 1
    ax.bar(range(len(labels)), [r["accuracy_mean"] for r in result["summary"]],
           yerr=[r["accuracy_seed_std"] for r in result["summary"]] if several else None, capsize=4,
           color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)), [label.replace(" (", "\n(") for label in labels], fontsize=8)
    low = min(r["accuracy_mean"] for r in result["summary"])
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("10-fold verification accuracy")
    ax.set_title(f"accuracy on unseen identities (mean of {len(result['seeds'])} seeds ± std)" if several
                 else "accuracy on unseen identities (one seed)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if result.get("step_memory"):
        plot_step_timelines({result["variants"][v]["label"]: step for v, step in result["step_memory"].items()},
                            ax=axes[0][1])
    else:
        axes[0][1].set_axis_off()
    plot_rocs(result, ax=axes[1][0])
    plot_losses(result, ax=axes[1][1])
    cfg = result["config"]
    fig.suptitle(f"python -m attfc_lite run: N = {cfg['num_classes']:,}, {cfg['image_size']} px, {cfg['backbone']}, "
                 f"{cfg['epochs']} epochs, on {result['device']} ({result['date']})", fontsize=11)
    fig.tight_layout()
    return fig
