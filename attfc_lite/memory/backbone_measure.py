"""Measuring what a backbone adds to a training step: the reference networks behind `BACKBONES`,
their per-image activation and inference bytes (`measure_backbone`), and a `BackboneSpec` from them (lesson 09)."""
from __future__ import annotations

from typing import Any

import torch

from ..checks import ArgumentError, as_int
from .catalog import BackboneSpec
from .head_model import dtype_name


def reference_backbone(name: str, embedding_dim: int = 512, image_size: int = 112) -> torch.nn.Module:
    """The network behind a `BACKBONES` entry, with random weights, for measuring.

    'iresnet50' / 'iresnet100': insightface's IResNet layout built from the library's
    pre-activation block (`backbones._Block`: BN-conv-BN-PReLU-conv-BN, 1x1 conv + BN shortcut
    when the shape changes), a 3x3 stride-1 stem with 64 channels, stages of 64/128/256/512
    channels each starting at stride 2, and the BN-dropout-FC-BN output block. The others go
    to `backbones.make_backbone`.
    """
    from torch import nn

    from ..backbones import _Block, _ceil_halvings, _EmbeddingHead, make_backbone

    layouts = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
    if name not in layouts:
        return make_backbone(name, embedding_dim, image_size)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
    cin = 64
    for cout, blocks in zip((64, 128, 256, 512), layouts[name]):
        layers += [_Block(cin, cout, 2)] + [_Block(cout, cout, 1) for _ in range(blocks - 1)]
        cin = cout
    layers.append(_EmbeddingHead(512, _ceil_halvings(image_size, 4), embedding_dim, 0.0))
    return nn.Sequential(*layers)


def measure_backbone(backbone: torch.nn.Module, image_size: int, *, amp_dtype: str | torch.dtype | None = None,
                     batch_sizes: tuple[int, int] | None = (2, 4),
                     inference_batch_sizes: tuple[int, int] | None = (8, 16)) -> dict[str, Any]:
    """Measure per-image memory of a backbone's training forward on the CPU.

    Returns 'params'; 'activation_bytes': bytes per image saved for backward (the unique
    storages autograd's `saved_tensors_hooks` receive, parameters and the input images
    excluded), the slope between the two `batch_sizes` (None to skip); 'constant_bytes': what
    the saved tensors hold that does not grow with the batch (under autocast: the half copies of
    the weights); 'inference_bytes': the slope of the peak allocation (torch.profiler records) of a
    no_grad forward with frozen parameters, as AttFC's key encoder runs (None to skip). Under
    `amp_dtype` everything runs in torch.autocast('cpu', dtype=amp_dtype). Train mode throughout
    (BatchNorm on batch statistics), restored afterwards. The inference batches must be large
    enough that feature maps, not one large layer's weight cast (autocast), set the peak: check
    that a third batch size gives the same slope.
    """
    import contextlib

    from .counting import _running
    from .measure_cpu import _profile_cpu_step

    if not isinstance(backbone, torch.nn.Module):
        raise ArgumentError("backbone", f"must be a torch.nn.Module, got {type(backbone).__name__}")
    amp = None if amp_dtype is None else getattr(torch, dtype_name(amp_dtype, "amp_dtype"))
    # up to 512 pixels, as TrainConfig: one image's activations grow with its area (70 MB at 112)
    size = as_int("image_size", image_size, 8, 512)

    def two_sizes(name: str, sizes) -> tuple[int, int]:
        # the per-image bytes are a slope between two batch sizes: they must differ
        if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
            raise ArgumentError(name, f"must be two batch sizes (small, large) or None, got {sizes!r}")
        small, large = (as_int(name, v, 2, 4096) for v in sizes)
        if not small < large:
            raise ArgumentError(name, f"must be two batch sizes with the first smaller, got {sizes!r}")
        return small, large

    if batch_sizes is not None:
        batch_sizes = two_sizes("batch_sizes", batch_sizes)
    if inference_batch_sizes is not None:
        inference_batch_sizes = two_sizes("inference_batch_sizes", inference_batch_sizes)
    autocast = (lambda: torch.autocast("cpu", dtype=amp)) if amp is not None else contextlib.nullcontext
    params = list(backbone.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    was_training = backbone.training
    backbone.train()
    gen = torch.Generator().manual_seed(0)

    def saved(b: int) -> int:
        images = torch.rand(b, 3, size, size, generator=gen)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
            out = backbone(images)
        del out
        skip = param_ptrs | {images.untyped_storage().data_ptr()}
        return sum(n for ptr, n in seen.items() if ptr not in skip)

    def inference_peak(b: int) -> int:
        images = torch.rand(b, 3, size, size, generator=gen)

        def run(mark) -> None:
            with torch.no_grad(), autocast(), mark("forward"):
                backbone(images)

        _, sizes, phases = _profile_cpu_step(run)
        return _running(sizes, phases)[1]

    try:
        result: dict[str, Any] = {"params": sum(p.numel() for p in params), "activation_bytes": None,
                                  "constant_bytes": None, "inference_bytes": None}
        if batch_sizes is not None:
            b1, b2 = batch_sizes
            s1, s2 = saved(b1), saved(b2)
            result.update(activation_bytes=round((s2 - s1) / (b2 - b1)),
                          constant_bytes=round(s1 - b1 * (s2 - s1) / (b2 - b1)))
        if inference_batch_sizes is not None:
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(False)  # as the key encoder's: autocast then keeps no weight copies
            try:
                i1, i2 = inference_batch_sizes
                result["inference_bytes"] = round((inference_peak(i2) - inference_peak(i1)) / (i2 - i1))
            finally:
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)
    finally:
        backbone.train(was_training)
    return result


def backbone_spec(name: str, backbone: torch.nn.Module, image_size: int, amp_dtype: str = "bfloat16",
                  **measure_kwargs: Any) -> BackboneSpec:
    """A `BackboneSpec` measured now: `measure_backbone` in fp32 and under autocast(`amp_dtype`)."""
    full = measure_backbone(backbone, image_size, **measure_kwargs)
    mixed = measure_backbone(backbone, image_size, amp_dtype=amp_dtype, **measure_kwargs)
    return BackboneSpec(name, full["params"], full["activation_bytes"], mixed["activation_bytes"],
                        full["inference_bytes"] or 0, mixed["inference_bytes"] or 0, int(image_size),
                        f"measured now by measure_backbone (mixed: autocast {amp_dtype} on the CPU)")
