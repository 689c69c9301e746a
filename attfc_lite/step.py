"""One training step, for any head: the step that `train` runs is the step the memory lessons measure (lessons 01, 09).

    keys       AttFC only: encoder_k follows encoder_q by EMA, then embeds the K key images (no grad)
    forward    encoder_q (the backbone) on the batch, then the head's loss
    backward   the gradients; the backbone's are clipped to the recipe's norm
    optimizer  SGD's update, then the gradients are freed (none is held between steps)

`mark(phase)` wraps each phase (the memory measurement names its allocations with it). A loss
that is nan or inf stops the step before backward, so no weight is changed by it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["training_step", "NonFiniteLoss", "PHASES"]

PHASES = ("keys", "forward", "backward", "optimizer")


class NonFiniteLoss(FloatingPointError):
    """The step's loss is nan or inf; raised before backward, so the weights are unchanged."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"the loss is {loss}")
        self.loss = loss


def training_step(backbone: nn.Module, head, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  labels: torch.Tensor, encoder_k=None, key_images: torch.Tensor | None = None,
                  clip_grad_norm: float = 0.0, clip_params: Sequence[torch.Tensor] | None = None,
                  amp: bool = False, mark: Callable[[str], contextlib.AbstractContextManager] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step of backbone + head on `images` [B, 3, H, W] with `labels` [B].

    AttFC: `encoder_k` and `key_images` [B * K, 3, H, W] (K = head.num_keys, each query's keys in
    a row). `clip_grad_norm` > 0 clips the gradient of `clip_params` (default: the backbone's
    parameters) to that norm. `amp`: the encoders run under autocast in bfloat16 on the images'
    device, the head in fp32. Returns (the loss, detached; the key embeddings [B, K, D] or None).
    """
    mark = mark or (lambda phase: contextlib.nullcontext())
    autocast = (lambda: torch.autocast(images.device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    keys = None
    if encoder_k is not None:
        with mark("keys"):
            encoder_k.update(backbone)  # EMA first, then the keys: they come from the updated encoder_k
            with autocast():
                keys = encoder_k(key_images).float().view(images.shape[0], head.num_keys, -1)
    with mark("forward"):
        with autocast():
            embeddings = backbone(images)
        embeddings = embeddings.float()
        loss = head(embeddings, labels) if keys is None else head(embeddings, labels, keys)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss.item())
    with mark("backward"):
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(list(backbone.parameters()) if clip_params is None else clip_params,
                                     clip_grad_norm)
    with mark("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), keys
