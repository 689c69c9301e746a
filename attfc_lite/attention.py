"""The attention loader: attention weights over an identity's K key images, and the GCC.

For each query (its normalised embedding q, with gradient) and the K raw key embeddings
k_1..k_K of the same identity from the key encoder:

    s_j = cos(q, k_j),   a = softmax(s / temperature) over j,   GCC = normalize(sum_j a_j k_j)

The GCC, the generative class centre, is a class centre made for this query from the keys
(AttFC's stand-in for a row of the FC weight). The weighted sum is over the *raw* keys, as in
the official code, so a key with a larger norm pulls harder; only the weights use cosines.
With temperature 1 (the paper's) the weights of K keys differ by at most e^2 ~ 7.4x.

Everything is batched over B and K (no Python loop over K, no host synchronisation), so the
CPU and CUDA give the same numbers up to rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_weights", "generative_class_centres"]


def _check(q: torch.Tensor, keys: torch.Tensor, temperature: float) -> None:
    if q.dim() != 2:
        raise ValueError(f"q must be [batch, embedding_dim], got shape {tuple(q.shape)}")
    if keys.dim() != 3 or keys.shape[0] != q.shape[0] or keys.shape[2] != q.shape[1]:
        raise ValueError(f"keys must be [batch={q.shape[0]}, K, embedding_dim={q.shape[1]}], got shape "
                         f"{tuple(keys.shape)}; the key encoder's output for K key images per query")
    if keys.shape[1] < 1:
        raise ValueError("keys must hold at least one key image per query (K >= 1)")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def attention_weights(q: torch.Tensor, keys: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the K keys of cos(q, k_j) / temperature: [B, K], each row sums to 1.

    `q`: [B, D] query embeddings (normalised here, so raw ones are fine too); `keys`: [B, K, D].
    """
    _check(q, keys, temperature)
    cos = torch.einsum("bd,bkd->bk", F.normalize(q, dim=1), F.normalize(keys, dim=2))
    return torch.softmax(cos / temperature, dim=1)


def generative_class_centres(q: torch.Tensor, keys: torch.Tensor,
                             temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [B, K], GCC [B, D]): the attention weights and the unit-norm weighted sum of the raw keys."""
    weights = attention_weights(q, keys, temperature)
    centre = torch.einsum("bk,bkd->bd", weights, keys)
    return weights, F.normalize(centre, dim=1)
