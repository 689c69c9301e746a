"""The interface every head shares (`Head`) and the full FC layer (`FullFC`) (lessons 01-02).

A head maps (embeddings, labels) to a scalar loss and says what it holds in memory between
steps (`held_tensors`), so that the memory model and the benchmarks can take any head. A head
that needs key embeddings (AttFC) says how many per query in `num_keys` and takes them as a
third argument `keys` [B, K, D]; the others ignore it.

This room imports no head built on it; `attfc_lite.heads` (the package) is the registry above
them all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import ArgumentError, as_int
from ..margins import Margin, make_margin


class Head(nn.Module):
    """Interface of every head: `forward(embeddings, labels) -> loss`."""

    embedding_dim: int
    num_classes: int
    num_keys: int = 0  # key embeddings per query that forward needs (AttFC: K)

    def held_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the head keeps between steps (parameters and buffers), by name.

        Gradients and optimizer state are not included: they belong to the training step
        and are accounted for by the memory model from the parameters listed here.
        """
        held = {name: p for name, p in self.named_parameters()}
        held.update({name: b for name, b in self.named_buffers()})
        return held

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held_tensors().values())

    def weights_dtype(self) -> torch.dtype | None:
        """The floating dtype of the head's parameters, or of its buffers when it has none
        (AttFC's container); None for a head that holds no floating tensor."""
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return None

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Refuse what would fail deep inside torch or give a nan loss, naming the argument."""
        for name, value in (("embeddings", embeddings), ("labels", labels)):
            if not isinstance(value, torch.Tensor):
                raise ArgumentError(name, f"must be a torch.Tensor, got {type(value).__name__}; convert it with "
                                          f"torch.as_tensor(...)")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ArgumentError(
                "embeddings", f"must have shape [batch, embedding_dim={self.embedding_dim}], got "
                              f"{tuple(embeddings.shape)}; check the backbone's embedding_dim")
        if embeddings.shape[0] == 0:
            raise ArgumentError("embeddings", f"must hold at least one row, got shape {tuple(embeddings.shape)}: the "
                                              "mean loss of an empty batch is nan")
        expected = self.weights_dtype()
        if expected is not None and embeddings.dtype != expected:
            raise ArgumentError(
                "embeddings", f"must have the head's dtype {expected}, got {embeddings.dtype}; cast them with "
                              f"embeddings.to({expected}) (as train does with .float() after autocast), or the "
                              f"head with head.to({embeddings.dtype})")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ArgumentError(
                "labels", f"must be 1-D with one entry per embedding ({embeddings.shape[0]}), got shape "
                          f"{tuple(labels.shape)}")
        if labels.dtype not in (torch.int64, torch.int32):
            raise ArgumentError("labels", f"must be an integer tensor (int64), got {labels.dtype}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ArgumentError(
                "labels", f"must lie in [0, num_classes={self.num_classes}); got min {int(labels.min())}, "
                          f"max {int(labels.max())}: build the head with num_classes covering every identity")


class FullFC(Head):
    """The full FC layer: one class centre per identity, margin softmax over all of them.

    Holds W of shape [num_classes, embedding_dim]; each step computes B x num_classes logits.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: Margin | str = "arcface", **margin_kwargs) -> None:
        super().__init__()
        self.embedding_dim = as_int("embedding_dim", embedding_dim, 1)
        self.num_classes = as_int("num_classes", num_classes, 2)
        if isinstance(margin, Margin) and margin_kwargs:
            raise ValueError(f"margin is already a built {type(margin).__name__}, so {sorted(margin_kwargs)} would be "
                             "ignored: pass them to the margin, or pass margin by name")
        self.margin = make_margin(margin, **margin_kwargs) if isinstance(margin, str) else margin
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Cosines between each embedding and every class centre, [B, num_classes] (or only the
        centres in `rows`, [B, len(rows)]: Partial FC's sample)."""
        centres = self.weight if rows is None else self.weight[rows]
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(centres, dim=1)).clamp(-1, 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        labels = labels.long()
        logits = self.margin(self.cosine(embeddings), labels)
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"

