"""Training under a memory cap: a whole run, or a few whole steps, in a child process held to a budget (lesson 09).

The capped child processes are `memory.oom`'s (RLIMIT_AS on the CPU, the memory fraction on
CUDA); what they run is `train` itself, so this room sits above training: `train_under_budget`
trains a run to its end under the cap (`large_n`'s runs past full FC's limit), and `WholeStep`
is the whole training step that `memory.find_oom_boundary(whole_step=...)` searches with.
"""
from __future__ import annotations

import gc
import pickle
import statistics
import sys
import time
from dataclasses import asdict, replace
from typing import Any, Callable

import torch

from .checks import as_device, as_float, as_int
from .memory import guard, oom
from .memory.guard import _vm, _vm_size
from .memory.oom import _apply_cap, _emit, _lift_cap, is_out_of_memory, oom_record
from .train import TrainConfig, evaluate_run, train
from .utils import default_device

__all__ = ["train_under_budget", "WholeStep"]


def _train_child() -> None:
    """Entry point of a capped training run: warm up outside the cap, cap, train, report."""
    spec = pickle.loads(sys.stdin.buffer.read())
    config = TrainConfig.from_dict(spec["config"])
    device = torch.device(spec["device"])
    # A few steps of the same kind of run at a small size set up threads, kernels and allocator
    # arenas once, so the cap counts only what the real run adds.
    train(replace(config, num_classes=spec["warmup_classes"], max_steps=2, epochs=1), progress=False, evaluate=False,
          check_memory=False)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base, cap = _apply_cap(device, spec["budget_bytes"])
    _emit({"event": "ready", "baseline_bytes": base, "cap": cap})
    every = spec.get("loss_every", 50)
    losses: list[float] = []
    epoch_losses: list[float] = []
    state = {"epoch": 0}

    def watch(step: dict) -> None:  # one event per epoch, so the parent can show progress
        if step["epoch"] != state["epoch"] and epoch_losses:
            _emit({"event": "epoch", "epoch": state["epoch"] + 1, "loss": statistics.fmean(epoch_losses),
                   "step": step["step"] - 1, "seconds": round(time.perf_counter() - start, 1)})
            epoch_losses.clear()
        state["epoch"] = step["epoch"]
        losses.append(step["loss"])
        epoch_losses.append(step["loss"])

    start = time.perf_counter()
    try:
        # check_memory=False: a real out-of-memory under the cap is the point
        result = train(config, progress=False, evaluate=False, check_memory=False, callback=watch)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        _emit({"event": "done", "fits": False, **oom_record(exc), "steps_done": len(losses),
               "seconds": round(time.perf_counter() - start, 3)})
        return
    seconds = round(time.perf_counter() - start, 3)
    if device.type == "cuda":
        used, peak = torch.cuda.memory_reserved(device) - base, torch.cuda.max_memory_reserved(device) - base
    else:  # VmPeak also counts the start-up and the warm-up, which at its few identities stay below the run
        used, peak = _vm_size() - base, _vm("VmPeak") - base
    if epoch_losses:  # the last epoch, which no later step announced
        _emit({"event": "epoch", "epoch": state["epoch"] + 1, "loss": statistics.fmean(epoch_losses),
               "step": len(losses), "seconds": seconds})
    # Verification needs no head and is not training: it runs with the cap lifted.
    _lift_cap(device)
    curve = [round(statistics.fmean(losses[i:i + every]), 4) for i in range(0, len(losses), every)]
    metrics = dict(result.metrics, verification=evaluate_run(result.backbone, config, device=device),
                   loss_curve={"every": every, "loss": curve})
    _emit({"event": "done", "fits": True, "metrics": metrics, "used_bytes": used, "peak_bytes": peak,
           "seconds": seconds})


def train_under_budget(config, budget_bytes: int, device: str | torch.device | None = None,
                       warmup_classes: int = 100, timeout_s: float = 900.0, loss_every: int = 50,
                       on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train `config` (a `TrainConfig`) in a child process capped at its size after a warm-up +
    `budget_bytes` (RLIMIT_AS on the CPU, the memory fraction on CUDA), as `find_oom_boundary`
    caps its steps; verification on the unseen identities runs after training with the cap lifted
    (it needs no head). Returns 'fits' (the whole training stayed under the cap),
    'metrics' (the run's, when it did, with 'loss_curve': the mean loss of every `loss_every`
    steps), 'error' (an out-of-memory message, whole) and 'requested_bytes' (the allocation that
    failed), 'peak_bytes' (the most held above the baseline: VmPeak on the CPU, the reserved peak
    on CUDA), 'used_bytes' (held at the end), 'cap', 'seconds', 'child_error'.
    `on_epoch({epoch, loss, step, seconds})` is called as each epoch ends in the child."""
    budget = as_int("budget_bytes", budget_bytes, 1)
    config = config.validate()
    dev = default_device(as_device("device", device) if device is not None else config.device)
    if dev.type == "cpu" and not sys.platform.startswith("linux"):
        raise ValueError("the CPU memory cap needs Linux (RLIMIT_AS and /proc); run it on Linux or on CUDA")
    warmup_classes = as_int("warmup_classes", warmup_classes, 2)
    timeout_s = as_float("timeout_s", timeout_s, 0, low_open=True)
    loss_every = as_int("loss_every", loss_every, 1)
    # the cap holds the run within the budget: the budget itself must fit in what the machine has free
    guard.check_fits(budget, dev, "budget_bytes", f"a run under a cap of {guard.format_bytes(budget)}",
                     "Choose a smaller budget.")
    spec = {"config": asdict(config), "device": str(dev), "budget_bytes": budget, "warmup_classes": warmup_classes,
            "loss_every": loss_every}
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "epoch" and on_epoch is not None:
            on_epoch({k: event[k] for k in ("epoch", "loss", "step", "seconds")})

    started = time.perf_counter()
    rc, other = oom._run_child("from attfc_lite.capped import _train_child; _train_child()", spec, timeout_s, on_event)
    ready = next((e for e in events if e["event"] == "ready"), {})
    done = next((e for e in events if e["event"] == "done"), None)
    result = {"budget_bytes": budget, "device": str(dev), "cap": ready.get("cap"), "fits": False, "metrics": None,
              "error": None, "requested_bytes": None, "peak_bytes": None, "used_bytes": None, "steps_done": None,
              "seconds": round(time.perf_counter() - started, 1), "child_error": None}
    if done is None:
        result["child_error"] = f"child ended without finishing (exit status {rc}): {' | '.join(other[-3:])}"
        result["error"] = result["child_error"]
    else:
        result.update({k: done[k] for k in ("fits", "metrics", "error", "requested_bytes", "peak_bytes", "used_bytes",
                                            "steps_done") if k in done})
    return result


class WholeStep:
    """Training steps of a `TrainConfig`'s whole run at any number of identities, as a picklable
    callable `(num_classes, device, steps)`: `train` itself for `steps` steps, with the batches
    rendered on demand (`faces.StreamedFaces`), so data loading counts as it does in training.
    What `memory.find_oom_boundary(whole_step=...)` runs in its capped child process."""

    def __init__(self, config) -> None:
        self.config = asdict(config.validate())

    def __call__(self, num_classes: int, device: torch.device, steps: int = 2) -> None:
        # two steps: the second holds the momentum buffers, the steady state
        config = replace(TrainConfig.from_dict(self.config), num_classes=int(num_classes), max_steps=int(steps),
                         stream_data=True, device=str(device))
        train(config, progress=False, evaluate=False, check_memory=False)  # a real OOM is the point
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def __repr__(self) -> str:
        return f"WholeStep(head={self.config['head']!r}, backbone={self.config['backbone']!r})"
