"""Same budget, trained to the end: the paper's main claim, measured (lesson 09).

    python -m attfc_lite run --large-n-only --large-n-mib 100 --image-size 16 --k 2 --keys-exclude-query \
        --large-n-factors 5 1 0.2 10 --large-n-compare-keys --out data/runs/large_n_cpu

Under one memory cap, `large_n` finds by running out of memory the largest number of identities
whose whole full FC training step fits (and Partial FC's), trains full FC and Partial FC at their
limits and AttFC at several times full FC's, each for the same epochs, and verifies every trained
backbone on the same unseen identities. `write_large_n` writes large_n.json and large_n.png;
`load_large_n`, `large_n_table` and `plot_large_n` read and show them.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from .checks import ArgumentError, as_float, as_int
from .run import STORED, results_folder, stored_file, stored_roc, write_results
from .train import TrainConfig
from .utils import provenance, read_stored

__all__ = ["large_n", "write_large_n", "load_large_n", "large_n_table", "plot_large_n", "LARGE_N_LABELS"]

#: The heads of the large-N run, in the order they are trained, and their labels.
LARGE_N_LABELS = {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}


def _brief_run(head: str, r: dict, n_fc: int, config: TrainConfig) -> dict:
    """One capped run as large_n.json keeps it: sizes, time, memory under the cap, verification."""
    m = r["metrics"] or {}
    v = m.get("verification") or {}
    record = {
        "head": head, "label": LARGE_N_LABELS[head], "num_classes": config.num_classes,
        "factor": round(config.num_classes / n_fc, 3), "images_per_identity": config.images_per_identity,
        "fits": r["fits"], "error": r["error"], "requested_bytes": r.get("requested_bytes"),
        "epochs": config.epochs, "max_steps": config.max_steps, "steps": m.get("steps", r.get("steps_done")),
        "images_seen": m.get("images"), "train_seconds": m.get("seconds"),
        "images_per_second": m.get("images_per_second"), "peak_bytes": r.get("peak_bytes"),
        "used_bytes": r.get("used_bytes"), "seconds": r["seconds"], "final_loss": m.get("final_loss"),
        "history": m.get("history"), "loss_curve": m.get("loss_curve"), "head_settings": m.get("head_settings"),
        "verification": None,
    }
    from .memory import predict_memory
    from .train import memory_knobs

    record["predicted_head_peak_bytes"] = predict_memory(config.num_classes, config.embedding_dim, config.batch_size,
                                                         head=head, **memory_knobs(config)).peak
    if head == "attfc":
        record.update(keys_exclude_query=config.keys_exclude_query, num_keys=config.num_keys,
                      key_images_embedded=(m.get("images") or 0) * config.num_keys, self_keys=m.get("self_keys"))
    if v:
        record["verification"] = {
            "accuracy_mean": v["accuracy_mean"], "accuracy_std": v["accuracy_std"], "auc": v["auc"],
            "tar_at_far": v["tar_at_far"], "far_achieved": v["far_achieved"],
            "num_genuine_all": v.get("num_genuine_all"), "num_impostor_all": v.get("num_impostor_all"),
            "roc": stored_roc(v["roc"])}
    return record


def large_n(base: TrainConfig | None = None, budget_bytes: int = 128 * 2 ** 20, factors: Sequence[float] = (5,),
            epochs: int = 3, images_per_identity: int = 2, steps: int | None = None,
            heads: Sequence[str] = ("fc", "partial_fc", "attfc"), compare_keys: bool = False,
            limit_share: float = 0.95, start: int | None = None, device: str | None = None, timeout_s: float = 3600.0,
            progress: bool = True) -> dict:
    """Same budget, trained to the end: where full FC stops fitting, and what AttFC does beyond it.

    Under one memory cap (`budget_bytes` above a child process's size after a warm-up: address
    space on the CPU, the process's share of the device on CUDA):
    1. the largest N whose whole full FC training step fits (two steps, found by running out of
       memory: `find_oom_boundary` with `capped.WholeStep`), and the same for Partial FC
       (its W, gradient and momentum still grow with N) when it is in `heads`;
    2. full FC and Partial FC trained at `limit_share` of their limits (a run of many steps needs a
       little more room than the search's two: the allocator's free lists fragment), and AttFC at each of
       `factors` times full FC's limit (the first is the main one; 0.2 or 10 as well as 5), every
       run for `epochs` epochs with the same images per identity, backbone, schedule and unseen
       evaluation identities; a full FC or Partial FC run that runs out of memory is retried at
       0.95 of its N, twice at most (an AttFC factor that does not fit is a result), and every try
       is kept;
    3. with `compare_keys`, AttFC at the main factor again with its keys drawn the other way
       (`keys_exclude_query`), to see what keys equal to the query image do.
    Verification runs after each training, with the cap lifted (it needs no head). `steps` caps
    each run's optimizer steps (a quick look; the schedule then ends there).
    Returns what large_n.json holds: `runs` (per head its main run), `points` (every run that
    finished or ran out of memory, for accuracy against N), `tried`, `boundaries`, the world, the
    device, the torch version and the date.
    """
    from .capped import WholeStep, train_under_budget
    from .memory import find_oom_boundary, predicted_boundary
    from .utils import default_device

    factors = [as_float("factors", f, 0, 1000, low_open=True) for f in factors]  # multiples of full FC's limit
    if not factors or len(set(factors)) != len(factors):
        raise ArgumentError("factors", f"must be one or more different numbers > 0, got {list(factors)}")
    heads = list(heads)
    if not heads or "fc" not in heads or set(heads) - set(LARGE_N_LABELS) or len(set(heads)) != len(heads):
        raise ArgumentError("heads", f"must include 'fc' (its limit sets the sizes) and be some of "
                                     f"{list(LARGE_N_LABELS)}, got {heads}")
    epochs = as_int("epochs", epochs, 1)
    steps = None if steps is None else as_int("steps", steps, 1)
    budget_bytes = as_int("budget_bytes", budget_bytes, 1)
    images_per_identity = as_int("images_per_identity", images_per_identity, 1)
    limit_share = as_float("limit_share", limit_share, 0, 1, low_open=True)
    timeout_s = as_float("timeout_s", timeout_s, 0, low_open=True)
    if start is not None:
        start = as_int("start", start, 2)
    base = replace((base or TrainConfig()), images_per_identity=images_per_identity, epochs=epochs,
                   max_steps=steps, stream_data=True).validate()
    if "attfc" in heads:  # refused now, not after the searches: AttFC needs two images of an identity
        replace(base, head="attfc").validate()
    dev = default_device(device if device is not None else base.device)
    base = replace(base, device=str(dev))
    started = time.perf_counter()

    def say(text: str) -> None:  # progress on stderr, as the command line's other messages
        if progress:
            import sys

            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stderr)

    def search(head: str) -> dict:
        config = replace(base, head=head, epochs=1)
        knobs = {"sample_rate": base.sample_rate} if head == "partial_fc" else {}
        head_only = predicted_boundary(budget_bytes, embedding_dim=base.embedding_dim, batch_size=base.batch_size,
                                       head=head, weight_decay=base.weight_decay, **knobs)
        first = max(100, head_only // 2) if start is None else start
        say(f"searching the largest N whose {LARGE_N_LABELS[head]} training step fits in "
            f"{budget_bytes / 2 ** 20:,.0f} MiB ...")
        b = find_oom_boundary(budget_bytes, head, base.embedding_dim, base.batch_size, device=str(dev), start=first,
                              rtol=0.05, warmup_classes=100, timeout_s=timeout_s, whole_step=WholeStep(config),
                              **knobs)
        if b.largest_fit is None or b.first_fail is None:
            raise RuntimeError(f"the search did not bracket {LARGE_N_LABELS[head]}'s limit (largest fit "
                               f"{b.largest_fit}, first failure {b.first_fail}; {b.child_error or 'no error'}): "
                               f"change start or budget_bytes")
        say(f"  {LARGE_N_LABELS[head]}: two training steps fit at N = {b.largest_fit:,}, not at {b.first_fail:,}")
        return {"largest_fit": b.largest_fit, "first_fail": b.first_fail, "trials": b.trials,
                "head_only_predicted": head_only, "cap": b.cap, "seconds": round(b.seconds, 1)}

    boundaries = {head: search(head) for head in ("fc", "partial_fc") if head in heads}
    n_fc = boundaries["fc"]["largest_fit"]
    tried: list[dict] = []

    def train_capped(head: str, n: int, retry: bool, **overrides) -> dict:
        for _ in range(3 if retry else 1):  # at most two retries, each at 0.95 of the N before
            config = replace(base, head=head, num_classes=max(2, int(n)), **overrides)
            what = f"{LARGE_N_LABELS[head]} at N = {config.num_classes:,} ({config.num_classes / n_fc:.2f}x)" + \
                _keys_text({"head": head, "keys_exclude_query": config.keys_exclude_query})
            try:
                config = config.validate()
            except ArgumentError as exc:  # e.g. more identities than the synthetic world holds: a result, kept
                r = {"fits": False, "error": f"not trained: {exc}", "metrics": None, "seconds": 0.0}
                record = {**_brief_run(head, r, n_fc, config), "skipped": True}
            else:
                say(f"training {what}, {epochs} epoch(s) ...")

                def epoch_done(e: dict) -> None:
                    say(f"  {what}: epoch {e['epoch']}/{epochs}, mean loss {e['loss']:.3f} ({e['seconds']:.0f} s)")

                r = train_under_budget(config, budget_bytes, dev, timeout_s=timeout_s, on_epoch=epoch_done)
                record = _brief_run(head, r, n_fc, config)
            tried.append({k: record[k] for k in ("head", "num_classes", "factor", "fits", "error", "steps")}
                         | ({"keys_exclude_query": config.keys_exclude_query} if head == "attfc" else {}))
            v, req = record["verification"], record["requested_bytes"]
            say(f"  {what}: " + (f"trained, 10-fold accuracy {v['accuracy_mean']:.3f}" if r["fits"] and v else
                                 record["error"] if record.get("skipped") or r.get("child_error") else
                                 "out of memory" + (f" (an allocation of {req:,} bytes failed)" if req else "")))
            if r["fits"] or record.get("skipped") or r.get("child_error"):
                break
            n = int(0.95 * config.num_classes)  # a long run can need a little more room than the search's steps
        return record

    runs, points = {}, []
    runs["fc"] = train_capped("fc", limit_share * n_fc, retry=True)
    points.append(runs["fc"])
    if "partial_fc" in heads:
        runs["partial_fc"] = train_capped("partial_fc", limit_share * boundaries["partial_fc"]["largest_fit"],
                                          retry=True)
        points.append(runs["partial_fc"])
    if "attfc" in heads:
        for i, factor in enumerate(factors):
            record = train_capped("attfc", round(factor * n_fc), retry=False)
            points.append(record)
            if i == 0:
                runs["attfc"] = record
        if compare_keys:
            points.append(train_capped("attfc", round(factors[0] * n_fc), retry=False,
                                       keys_exclude_query=not base.keys_exclude_query))
    return {
        "budget_mib": round(budget_bytes / 2 ** 20, 3), "budget_bytes": int(budget_bytes),
        "cap": boundaries["fc"]["cap"], "factors": factors, "limit_share": limit_share, "epochs": epochs,
        "max_steps": steps,
        "world": {"images_per_identity": images_per_identity, "image_size": base.image_size,
                  "eval_identities": base.eval_identities, "eval_images_per_identity": base.eval_images_per_identity,
                  "backbone": base.backbone, "embedding_dim": base.embedding_dim, "batch_size": base.batch_size},
        "boundaries": boundaries, "runs": runs, "points": points, "tried": tried,
        "config": {k: v for k, v in asdict(base).items() if k not in ("head", "num_classes")},
        **provenance(dev), "seconds": round(time.perf_counter() - started, 1), "command": None,
    }


def write_large_n(out: str | os.PathLike, base: TrainConfig | None = None, budget_bytes: int = 128 * 2 ** 20,
                  command: str | None = None, overwrite: bool = False, beside_run: bool = False,
                  **options) -> dict:
    """`large_n(base, budget_bytes, **options)` written to the folder `out`: large_n.json and
    large_n.png. A folder holding results is refused unless `overwrite` (the new files then
    replace it only once they are complete); `beside_run=True` writes into the folder that
    `run_heads` has just written (the command line's `run --large-n-mib` without --large-n-only)."""
    final = out = Path(out)
    if out.suffix:
        raise ArgumentError("out", f"is a folder (it gets large_n.json and large_n.png), got {out}")
    if not beside_run:
        out = results_folder(out, overwrite)
    result = large_n(base, budget_bytes, **options)
    result["command"] = command
    write_results(out, final, "large_n", result, plot_large_n)
    return result


def load_large_n(path: str | os.PathLike) -> dict:
    """What `large_n` wrote: a folder holding large_n.json, the file, or a stored run's name
    ("large_n_cpu": data/runs/large_n_cpu/large_n.json)."""
    return read_stored(stored_file(path, "large_n.json"), STORED,
                       {"budget_mib", "boundaries", "runs", "points", "world", "device", "command"},
                       "python -m attfc_lite run --large-n-mib ... --large-n-only")


def _keys_text(p: dict) -> str:
    """How an AttFC run drew its keys, in words ('' for the other heads)."""
    if p["head"] != "attfc":
        return ""
    return ", keys other than the query" if p.get("keys_exclude_query") else ", keys with the query (official)"


def _point_label(p: dict) -> str:
    return f"{p['label']} ({p['factor']:g}x){_keys_text(p)}"


def large_n_table(result: dict) -> str:
    """One line per capped run: N (and its multiple of full FC's limit), steps, images seen, time,
    peak memory under the cap, 10-fold accuracy (± its fold spread) and TAR@FAR with its impostor pairs."""
    fars = ("1e-3", "1e-4")
    lines = [f"{'':<44}{'N':>9}{'steps':>7}{'images':>10}{'train s':>9}{'peak MiB':>10}{'accuracy':>16}"
             + "".join(f"{'TAR@' + k:>10}" for k in fars)]
    for p in result["points"]:
        line = f"{_point_label(p):<44}{p['num_classes']:>9,}"
        if p.get("skipped"):
            lines.append(line + f"        {p['error'][:70]}")
            continue
        if not p["fits"]:
            req = p.get("requested_bytes")
            lines.append(line + f"{p['steps'] or 0:>7,}   out of memory"
                         + (f": an allocation of {req / 2 ** 20:,.1f} MiB failed" if req else ""))
            continue
        v = p["verification"]
        line += (f"{p['steps']:>7,}{p['images_seen']:>10,}{p['train_seconds']:>9,.0f}"
                 f"{(p['peak_bytes'] or 0) / 2 ** 20:>10,.1f}{v['accuracy_mean']:>9.3f} ± {v['accuracy_std']:.3f}")
        line += "".join(f"{v['tar_at_far'][k] or 0:>10.3f}" for k in fars)
        lines.append(line)
    impostors = next((p["verification"]["num_impostor_all"] for p in result["points"] if p.get("verification")), None)
    if impostors:
        lines.append(f"(TAR@FAR over all pairs of the unseen identities: {impostors:,} impostor pairs, so FAR 1e-4 "
                     f"accepts at most {int(impostors * 1e-4):,} of them)")
    return "\n".join(lines)


def plot_large_n(result: dict, axes=None):
    """Two panels of a large-N run: accuracy on unseen identities against the number of training
    identities (each head's runs; a cross where a run did not fit), and the loss curves."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax, ax_loss = axes
    # AttFC's two key samplers get two colours: their curves are read against each other
    colors = {("fc", False): "tab:blue", ("partial_fc", False): "tab:orange", ("attfc", True): "tab:green",
              ("attfc", False): "tab:purple"}

    def kind(p: dict) -> tuple[str, bool]:
        return p["head"], bool(p.get("keys_exclude_query"))

    limit = result["boundaries"]["fc"]["largest_fit"]
    groups: dict[tuple, list] = {}
    for p in result["points"]:
        groups.setdefault(kind(p), []).append(p)
    for (head, excl), group in groups.items():
        label = LARGE_N_LABELS[head] + _keys_text(group[0])
        done = sorted((p for p in group if p["fits"] and p.get("verification")), key=lambda p: p["num_classes"])
        if done:
            ax.errorbar([p["num_classes"] for p in done], [p["verification"]["accuracy_mean"] for p in done],
                        yerr=[p["verification"]["accuracy_std"] for p in done], marker="s" if excl else "o",
                        ls="--" if excl else "-", color=colors[head, excl], capsize=3, label=label)
        for p in group:
            if not p["fits"] and not p.get("skipped"):  # where it ran out of memory: on the axis, named
                ax.axvline(p["num_classes"], color=colors[head, excl], ls="--", lw=1)
                ax.annotate(f"{p['label']} ({p['factor']:g}x):\nout of memory", (p["num_classes"], 0.02),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=7, ha="right", va="bottom",
                            color=colors[head, excl])
    ax.axvline(limit, color="grey", ls=":", lw=1, label=f"full FC's limit ({limit:,})")
    ax.set_xscale("log")
    ax.set_xlabel("training identities N (log scale)")
    ax.set_ylabel("10-fold verification accuracy (± fold std)")
    ax.set_title(f"unseen identities, after {result['epochs']} epochs under {result['budget_mib']:g} MiB", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    shades: dict[tuple, list] = {}
    for p in result["points"]:
        curve = p.get("loss_curve")
        if not (p["fits"] and curve and curve["loss"]):
            continue
        # against epochs: runs of different N have different numbers of steps in an epoch
        per_epoch = max(1, p["num_classes"] * p["images_per_identity"] // result["world"]["batch_size"])
        shade = shades.setdefault(kind(p), [0.0])
        ax_loss.plot([curve["every"] * (i + 0.5) / per_epoch for i in range(len(curve["loss"]))], curve["loss"],
                     color=colors[kind(p)], alpha=1.0 - shade[0], ls="--" if p.get("keys_exclude_query") else "-",
                     lw=1.2, marker="." if len(curve["loss"]) < 3 else None, label=_point_label(p))
        shade[0] = min(0.6, shade[0] + 0.3)  # a kind's later runs (other factors) lighter
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(f"training loss (mean of {next((p['loss_curve']['every'] for p in result['points'] if p.get('loss_curve')), 0)} steps)")
    ax_loss.set_title("loss curves (each head's own loss: not comparable across heads)", fontsize=10)
    ax_loss.set_ylim(bottom=0)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    fig = ax.figure
    fig.suptitle(f"same budget, trained to the end: {result['world']['images_per_identity']} images per identity, "
                 f"{result['world']['image_size']} px, on {result['device']} ({result['date']})", fontsize=11)
    fig.tight_layout()
    return fig
