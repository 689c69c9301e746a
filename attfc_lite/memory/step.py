"""The memory of a whole training step: backbone, head, optimizer and, for AttFC, the key encoder (lesson 09).

`measure_head_step` (lesson 02) measures the head alone, with embeddings handed to it. A real
step also keeps the backbone's weights, gradients and optimizer state and its activations from
forward to backward; AttFC adds encoder_k (a copy of the backbone with no gradient and no
optimizer state) and the activations of K key images per query while they are embedded.
`measure_model_step` builds a run's model exactly as `train` does, runs steady-state steps on
random images of the run's size, and measures one: the very step `train` runs
(`attfc_lite.step.training_step`), in its four phases:

    keys       AttFC only: the EMA update of encoder_k and the key images' forward (no grad)
    forward    the backbone on the batch and the head's loss
    backward   gradients of the backbone and the head, the backbone's clipped to the recipe's norm
    optimizer  SGD's update, then the gradients are freed

Same instruments as the head step: the CUDA allocator's history on a GPU (mixed precision
with `amp=True`), the profiler's allocation records on the CPU.
"""
from __future__ import annotations

import gc
from typing import Any

import torch

from ..checks import ArgumentError, as_bool, as_device, as_int
from ..step import training_step
from .measure import _profile_cpu_step, _running, _trace_cuda_step, _unique_bytes, timed

__all__ = ["measure_model_step", "plot_step_timelines", "thin_timeline"]


def measure_model_step(config, device: str | torch.device | None = None, warmup_steps: int = 2, amp: bool = False,
                       seed: int = 0) -> dict[str, Any]:
    """Measure one steady-state training step of the whole model `config` (a `TrainConfig`) describes.

    Returns a JSON-serialisable dict: 'held_bytes' (weights, buffers, optimizer state, encoder_k,
    the batch: alive between steps), 'step_peak_bytes' (the peak above that during the step),
    'peak_bytes' (their sum), 'phase_peaks', 'step_seconds', 'timeline_ms' / 'timeline_bytes' /
    'timeline_phase' (bytes above held at each allocation or free), 'device', 'method', 'amp',
    and 'parts' (bytes of the backbone's parameters, encoder_k's, the head's held tensors and
    the optimizer state).
    """
    from ..config import build, memory_knobs
    from ..encoders import KeyEncoder
    from ..utils import default_device
    from . import guard
    from .model import predict_memory

    config = config.validate()
    dev = default_device(as_device("device", device) if device is not None else config.device)
    warmup_steps = as_int("warmup_steps", warmup_steps, 1)  # the first creates the momentum buffers
    amp = as_bool("amp", amp)
    seed = as_int("seed", seed, 0)
    if amp and dev.type != "cuda":
        raise ArgumentError("amp", "must be False on the CPU: amp=True needs a CUDA device (autocast in bfloat16 "
                                   "on the GPU)")
    # The head is what grows with N: its predicted step, with the batch of images (and AttFC's key
    # images), is a lower bound of the whole step, enough to refuse before building anything.
    head_pred = predict_memory(config.num_classes, config.embedding_dim, config.batch_size, head=config.head,
                               **memory_knobs(config))
    images = (1 + head_pred.symbols["K"]) * config.batch_size * 3 * config.image_size ** 2 * 4
    guard.check_fits(head_pred.peak + images, dev, None,
                     f"N = {config.num_classes:,}, D = {config.embedding_dim:,}, B = {config.batch_size:,}: one "
                     f"{config.head} training step (the head and the images; the backbone comes on top)",
                     "Choose fewer identities, or predict the step with memory.predict_training_step.")
    torch.manual_seed(seed)
    backbone, head = build(config, dev)
    backbone.train()
    head.train()
    encoder_k = KeyEncoder(backbone, config.ema_momentum).to(dev) if head.num_keys else None
    if encoder_k is not None:
        encoder_k.train()  # BatchNorm on the key batch's statistics, as in training
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    b, size = config.batch_size, config.image_size
    images = torch.rand(b, 3, size, size, generator=gen).to(dev)
    labels = torch.randint(0, config.num_classes, (b,), generator=gen).to(dev)
    key_images = torch.rand(b * head.num_keys, 3, size, size, generator=gen).to(dev) if encoder_k is not None else None

    def run(mark=None) -> None:  # the step train runs, the backbone's gradient clipped as there
        training_step(backbone, head, optimizer, images, labels, encoder_k, key_images,
                      clip_grad_norm=config.clip_grad_norm, amp=amp, mark=mark)

    for _ in range(warmup_steps):
        run()
    step_seconds = timed(run, dev)
    gc.collect()

    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    parts = {
        "backbone": _unique_bytes(list(backbone.parameters()) + list(backbone.buffers())),
        "encoder_k": _unique_bytes(encoder_k.parameters()) + _unique_bytes(encoder_k.buffers())
        if encoder_k is not None else 0,
        "head": _unique_bytes(head.held_tensors().values()),
        "optimizer_state": _unique_bytes(state),
        "batch": _unique_bytes([images, labels] + ([key_images] if key_images is not None else [])),
    }
    held = sum(parts.values())
    reserved = None
    if dev.type == "cuda":
        times, sizes, phases, step_peak, reserved = _trace_cuda_step(run, dev)
        running, _, phase_peaks = _running(sizes, phases)
        method = "cuda allocator history (max_memory_allocated above the held tensors)"
    else:
        times, sizes, phases = _profile_cpu_step(run)
        running, step_peak, phase_peaks = _running(sizes, phases)
        method = "cpu: torch.profiler allocation records (PyTorch's tensor allocations)"
    return {
        "head": config.head, "num_classes": config.num_classes, "batch_size": b, "image_size": size,
        "backbone": config.backbone, "num_keys": head.num_keys, "device": str(dev), "method": method, "amp": amp,
        "held_bytes": held, "step_peak_bytes": int(step_peak), "peak_bytes": held + int(step_peak),
        "reserved_peak_bytes": reserved, "phase_peaks": phase_peaks, "parts": parts, "step_seconds": step_seconds,
        "timeline_ms": list(times), "timeline_bytes": list(running), "timeline_phase": list(phases),
    }


def thin_timeline(step: dict[str, Any], points: int = 400) -> dict[str, Any]:
    """`step` with its timeline cut to about `points` entries, keeping each phase's peak and ends."""
    points = as_int("points", points, 2)
    n = len(step["timeline_ms"])
    if n <= points:
        return dict(step)
    keep = set(range(0, n, max(1, n // points))) | {n - 1}
    values = step["timeline_bytes"]
    for phase in set(step["timeline_phase"]):
        idx = [i for i, p in enumerate(step["timeline_phase"]) if p == phase]
        keep |= {idx[0], idx[-1], max(idx, key=lambda i: values[i])}
    keep = sorted(keep)
    out = dict(step)
    for key in ("timeline_ms", "timeline_bytes", "timeline_phase"):
        out[key] = [step[key][i] for i in keep]
    return out


def plot_step_timelines(steps: dict[str, dict[str, Any]], unit: str = "MiB", ax=None):
    """Memory of one whole training step per head (label -> `measure_model_step` dict): the held
    tensors plus what the step allocates, against the share of the step's time."""
    import matplotlib.pyplot as plt

    from .model import _unit_scale

    ax = ax or plt.subplots(figsize=(7, 3.8))[1]
    scale = _unit_scale(unit)
    for label, step in steps.items():
        t = step["timeline_ms"]
        end = t[-1] if t and t[-1] > 0 else 1.0
        x = [0.0] + [v / end for v in t]
        y = [step["held_bytes"] / scale] + [(step["held_bytes"] + v) / scale for v in step["timeline_bytes"]]
        line, = ax.step(x, y, where="post", lw=1.2, label=f"{label}: peak {step['peak_bytes'] / scale:,.1f} {unit}")
        ax.axhline(step["held_bytes"] / scale, color=line.get_color(), ls=":", lw=0.8)
    ax.plot([], [], ":", color="0.4", lw=0.8, label="dotted: held between steps")
    ax.set_xlabel("share of each head's own step time (keys, forward, backward, optimizer)")
    ax.set_ylabel(f"allocated ({unit}): held + step")
    ax.set_title("one whole training step per head", fontsize=10)
    ax.set_ylim(bottom=0)  # from 0: the heads' held memory and peaks compare at their true sizes
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the peaks stay visible
    return ax
