"""Advice for a training run that ran out of memory (`explain_oom`): the head's predicted peak, its
largest terms, and what would fit instead, from the memory model (lesson 02)."""
from __future__ import annotations

from typing import Any

import torch

from ..checks import ArgumentError, as_int
from .guard import format_bytes
from .head_model import predict_memory, predicted_boundary


_OOM_KNOBS = ("momentum", "weight_decay", "sample_rate", "num_keys", "container_ratio", "container_size")
_HEAD_NAMES = {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}


def explain_oom(head: str, num_classes: int, embedding_dim: int = 512, batch_size: int = 128, *,
                dtype: str | torch.dtype = "float32", optimizer: str = "sgd", capacity_bytes: int | None = None,
                top: int = 4, **knobs: Any) -> str:
    """What to tell a training run that ran out of memory: a few lines of text.

    The head's predicted step (`predict_memory`): its peak, the `top` largest terms at the peak
    (with the N x D class centres W spelled out in bytes), and what would fit instead, each with
    its own predicted peak: fewer identities, Partial FC, AttFC, a smaller batch. `knobs`: what
    `train.memory_knobs(config)` returns (momentum, weight_decay, sample_rate, num_keys,
    container_ratio, container_size). `capacity_bytes`: the device's memory, when known: then
    the text gives the largest N whose head step fits it, and says when the head alone fits
    (the backbone is then the likelier cause). The model counts the head alone: the backbone's
    weights, gradients, optimizer state and activations come on top.
    """
    unknown = sorted(set(knobs) - set(_OOM_KNOBS))
    if unknown:
        raise ArgumentError(unknown[0], f"is not a memory knob; explain_oom takes {list(_OOM_KNOBS)}")
    top = as_int("top", top, 1)
    capacity = None if capacity_bytes is None else as_int("capacity_bytes", capacity_bytes, 1)
    settings = dict(embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer)
    pred = predict_memory(num_classes, head=head, **settings, **knobs)
    cfg, sym = pred.config, pred.symbols
    kind, n, d, b = cfg["head"], cfg["num_classes"], cfg["embedding_dim"], cfg["batch_size"]
    lines = [f"Out of memory. The {_HEAD_NAMES[kind]} head's step alone is predicted to need "
             f"{format_bytes(pred.peak)} at its peak ({pred.peak_phase}) with N = {n:,} identities, D = {d}, "
             f"B = {b}, {cfg['dtype']}, {cfg['optimizer']}; the backbone comes on top.",
             "Largest terms at the peak:"]
    largest = sorted(pred.peak_terms().items(), key=lambda kv: -kv[1])[:top]
    width = max(len(name) for name, _ in largest)
    for name, value in largest:
        lines.append(f"  {name:<{width}}  {format_bytes(value):>10}  ({value:,} bytes = {pred.formulas[name]})")
    if sym["R"]:
        w_bytes = sym["R"] * d * sym["e"]
        lines.append(f"W, the class centres, is N x D = {n:,} x {d} x {sym['e']} bytes = {w_bytes:,} bytes "
                     f"({format_bytes(w_bytes)}); its gradient and optimizer state are as large.")
    if capacity is not None:
        fits = pred.peak <= capacity
        most = predicted_boundary(capacity, head=kind, **settings, **knobs) if kind != "attfc" or \
            knobs.get("container_size") is None else None
        line = f"The device holds {format_bytes(capacity)}: the head's step alone {'fits' if fits else 'does not fit'}"
        line += f"; at most N = {most:,} identities fit with it." if most is not None else "."
        if fits:
            line += (" The backbone's activations and weights are then the likelier cause: they grow with the "
                     "batch (--batch-size) and halve under mixed precision (--amp, on CUDA).")
        lines.append(line)
    lines.append("Other settings (the head's step alone, predicted):")

    def alt(num_classes: int = n, **change: Any) -> str:
        c = dict(settings, head=kind, **knobs)
        c.update(change)
        if c["head"] != kind:  # another head: only the optimizer's knobs carry over
            c = {k: v for k, v in c.items() if k not in ("sample_rate", "num_keys", "container_ratio",
                                                         "container_size")}
        return format_bytes(predict_memory(num_classes, **c).peak)

    if n >= 4:
        lines.append(f"  - fewer identities (--classes): {alt(num_classes=n // 2)} at N = {n // 2:,}")
    if kind != "partial_fc":
        lines.append(f"  - Partial FC (--head partial_fc, --sample-rate 0.1): {alt(head='partial_fc')}; W, its "
                     f"gradient and optimizer state stay N x D, the logits shrink")
    if kind != "attfc":
        lines.append(f"  - AttFC (--head attfc): {alt(head='attfc')} with its container at 0.3 N (--dcc-ratio) "
                     f"and no W; its key encoder, a copy of the backbone, comes on top")
    else:
        q = sym["Q"]
        lines.append(f"  - a smaller container (--dcc-ratio, --container-size; now Q = {q:,}): "
                     f"{alt(container_size=max(1, q // 2), container_ratio=None)} at Q = {max(1, q // 2):,}")
    if b >= 2:
        lines.append(f"  - a smaller batch (--batch-size): {alt(batch_size=b // 2)} at B = {b // 2}"
                     + ("; for FC heads at D > B the batch matters little, N does" if kind != "attfc" else ""))
    return "\n".join(lines)
