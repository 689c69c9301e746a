"""Embeddings of images by a model: L2-normalised, optionally with the mirrored image added
(the usual test-time protocol) (lesson 01)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import default_device


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def embed(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    flip: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Tensor:
    """L2-normalised embeddings [N, D] (CPU float32) of images [N, 3, H, W] in [0, 1].

    With `flip`, each embedding is model(image) + model(mirrored image) before normalising,
    the usual test-time protocol. The model runs in eval mode under no_grad; every submodule's
    train/eval flag is restored afterwards. `device` is where the batches go (default: the
    model's device); the model itself is not moved.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}; add a batch dim with images[None] for one image")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0); pass at least one image")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}; use images.float() / 255")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = _model_device(model) if device is None else default_device(device)

    modes = [(m, m.training) for m in model.modules()]
    starts = range(0, images.shape[0], int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch")
    out = []
    model.eval()
    try:
        with torch.no_grad():
            for s in starts:
                x = images[s : s + batch_size].to(dev)
                e = model(x)
                if not isinstance(e, Tensor) or e.dim() != 2 or e.shape[0] != x.shape[0]:
                    got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                    raise ValueError(f"model must return embeddings of shape [batch, embedding_dim], got {got}")
                if flip:
                    e = e + model(torch.flip(x, dims=[3]))
                out.append(F.normalize(e.float(), dim=1).cpu())
    finally:
        for m, was_training in modes:
            m.training = was_training
    return torch.cat(out)
