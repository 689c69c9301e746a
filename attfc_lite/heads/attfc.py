"""The AttFC head: attention loader + generative class centres + dynamic class container (lessons 05, 08).

One step, for a batch of B query embeddings (from encoder_q, with gradient), their labels,
and K key embeddings per query ([B, K, D], from encoder_k under no_grad):

1. q = normalize(query embedding);
2. attention weights and the GCC of each query from its K keys (`attention`), as constants;
3. logits [B, 1 + Q]: column 0 the positive q . GCC, columns 1..Q the cosines to the Q
   centres in the container as it was before this batch;
4. mask: container entries of the query's own identity, and empty slots, leave the softmax
   (their logit is -inf: exactly zero weight; the official code clamps them to -1 instead,
   e^-s, negligible);
5. the course's margin on column 0 only (its cosine clamped to [-1, 1], as FullFC's), scale
   s, cross-entropy with target 0; the negatives need no clamp (no arccos meets them);
6. enqueue the B GCCs and labels (training mode only): a step never sees its own GCCs.

Only encoder_q receives gradients: the GCCs, the keys and the container are constants, and
the head itself has no parameters (nothing to optimise, no optimizer state).

Memory. A plain autograd version of step 3-5 keeps several B x (1 + Q) buffers for its
backward and, since the enqueue overwrites the container that the logits' matmul saved,
needs either a copy of the container or the enqueue moved after backward. `attfc_loss`
computes the loss and its gradient in one pass instead: one B x Q buffer of logits becomes
exp(logit - row max) in place, the gradient of q ((p0 - 1) * dz0/dq + s * P @ centres) is
formed right away, and backward only hands it on. The result equals autograd's (the
tests compare them); lesson 08 writes the plain version out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import ArgumentError, as_bool, as_float, as_int
from ..attention import check_temperature, generative_class_centres
from ..container import EMPTY, DynamicClassContainer
from .base import Head
from ..margins import Margin, make_margin

__all__ = ["AttFC", "attfc_loss", "container_capacity", "DEFAULT_CONTAINER_RATIO", "DEFAULT_NUM_KEYS"]

DEFAULT_CONTAINER_RATIO = 0.3  # the official configuration: Q = 30 % of the identities
DEFAULT_NUM_KEYS = 2  # the official configuration: sample_num = 3, one query and two keys


def container_capacity(num_classes: int, container_ratio: float | None = DEFAULT_CONTAINER_RATIO,
                       container_size: int | None = None) -> int:
    """Q: `container_size` if given, else floor(container_ratio * num_classes), at least 1."""
    if container_size is not None:
        return as_int("container_size", container_size, 1)
    if container_ratio is None:
        raise ArgumentError("container_ratio", "is None and so is container_size: give one of them")
    ratio = as_float("container_ratio", container_ratio, 0, 1, low_open=True)  # a share of the identities
    return max(1, int(ratio * as_int("num_classes", num_classes, 1)))


class _AttFCLoss(torch.autograd.Function):
    """Loss and gradient of q in one pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, gcc, centres, centre_labels, labels, margin, container_full=False, mask_own=True):
        batch = q.shape[0]
        s = margin.s
        # Column 0: the margin's positive logit, and its derivative by autograd on B numbers.
        cos_pos = torch.bmm(q.detach().unsqueeze(1), gcc.unsqueeze(2)).view(batch).requires_grad_(True)
        with torch.enable_grad():
            z0 = margin.positive_logit(cos_pos.clamp(-1, 1)) * s
            dz0 = torch.autograd.grad(z0.sum(), cos_pos)[0] if ctx.needs_input_grad[0] else None
        z0 = z0.detach()
        # Columns 1..Q in one buffer, transformed in place: scaled cosines (s folded into q),
        # then exp(logit - row max). The negatives are not clamped: they never meet an arccos,
        # and dot products of unit vectors stay within [-1, 1] up to rounding.
        centres = centres.to(q.dtype)
        logits = (q.detach() * s) @ centres.t()
        if not container_full:  # empty slots leave the softmax
            logits.masked_fill_(centre_labels == EMPTY, float("-inf"))  # [Q] mask, broadcast over rows
        if mask_own:
            logits.masked_fill_(centre_labels[None, :] == labels[:, None], float("-inf"))
        top = torch.maximum(z0, logits.max(dim=1).values)  # all masked: -inf, and z0 wins
        logits.sub_(top[:, None]).exp_()
        e0 = torch.exp(z0 - top)
        denom = e0 + logits.sum(dim=1)
        loss = (top + torch.log(denom) - z0).mean()
        if dz0 is not None:
            # dL/dq = ((p0 - 1) * dz0/dc0 * gcc + s * sum_i p_i * centre_i) / B, with
            # p_i = exp(z_i - top) / denom: the division is done on the B x D product.
            grad_q = (logits @ centres).mul_((s / batch) / denom[:, None])
            grad_q.addcmul_(gcc, ((e0 / denom - 1.0) * dz0 / batch)[:, None])
            ctx.save_for_backward(grad_q)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad_q,) = ctx.saved_tensors
        return grad_output * grad_q, None, None, None, None, None, None, None


def attfc_loss(q: torch.Tensor, gcc: torch.Tensor, centres: torch.Tensor, centre_labels: torch.Tensor,
               labels: torch.Tensor, margin: Margin, container_full: bool = False,
               mask_own: bool = True) -> torch.Tensor:
    """Mean cross-entropy of [margin(q . gcc) | q . centres (masked)] with target 0; gradient to q only.

    `q` [B, D] normalised queries, `gcc` [B, D] unit positive centres, `centres` [Q, D] and
    `centre_labels` [Q] (int64, -1 empty) the container, `labels` [B] the queries' identities.
    `container_full=True` skips looking for empty slots (a pass over B x Q saved).
    `mask_own=False` keeps the entries of the query's own identity as negatives (the
    ablation of lesson 07; the method masks them).
    """
    return _AttFCLoss.apply(q, gcc.detach(), centres.detach(), centre_labels, labels, margin, container_full,
                            mask_own)


class AttFC(Head):
    """Attention FC: no weight matrix; the GCC as the positive and a container of past GCCs as negatives.

    `container_size` Q (or `container_ratio` of `num_classes`, 0.3 by default), `num_keys` K
    key embeddings per query, `temperature` of the attention softmax (1, the paper's), and the
    margin (ArcFace s=64, m=0.5 by default, as the official code) on the positive column.
    `mask_own=False` stops masking the container's entries of a query's own identity (an
    ablation: they then count as negatives).
    """

    def __init__(self, embedding_dim: int, num_classes: int, container_size: int | None = None,
                 container_ratio: float = DEFAULT_CONTAINER_RATIO, num_keys: int = DEFAULT_NUM_KEYS,
                 temperature: float = 1.0, margin: Margin | str = "arcface", mask_own: bool = True,
                 **margin_kwargs) -> None:
        super().__init__()
        embedding_dim, num_classes = as_int("embedding_dim", embedding_dim, 1), as_int("num_classes", num_classes, 2)
        num_keys = as_int("num_keys", num_keys, 1)  # K, key images per query
        temperature = check_temperature(temperature)
        if isinstance(margin, Margin) and margin_kwargs:
            raise ValueError(f"margin is already a built {type(margin).__name__}, so {sorted(margin_kwargs)} would be "
                             "ignored: pass them to the margin, or pass margin by name")
        self.embedding_dim, self.num_classes = int(embedding_dim), int(num_classes)
        mask_own = as_bool("mask_own", mask_own)
        self.num_keys, self.temperature, self.mask_own = int(num_keys), float(temperature), mask_own
        self.margin = make_margin(margin, **margin_kwargs) if isinstance(margin, str) else margin
        self.container = DynamicClassContainer(container_capacity(num_classes, container_ratio, container_size),
                                               self.embedding_dim)
        self.last_weights: torch.Tensor | None = None  # attention weights of the last batch, for the lessons
        # (gccs, labels) -> every process's gccs and labels: set by a run over several processes
        # (`distributed.gather_container`, lesson 10), so that every rank enqueues the same entries
        self.gather = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        if keys is None:
            raise ArgumentError("keys", f"is needed by AttFC: the key encoder's embeddings of K={self.num_keys} key "
                                        f"images per query, shape [batch, K, embedding_dim]")
        if not isinstance(keys, torch.Tensor):
            raise ArgumentError("keys", f"must be a torch.Tensor, got {type(keys).__name__}; convert it with "
                                        f"torch.as_tensor(...)")
        if keys.dim() != 3 or keys.shape[0] != embeddings.shape[0] or keys.shape[2] != self.embedding_dim:
            raise ArgumentError("keys", f"must be [batch={embeddings.shape[0]}, K, "
                                        f"embedding_dim={self.embedding_dim}], got shape {tuple(keys.shape)}")
        if keys.shape[1] != self.num_keys:
            raise ArgumentError("keys", f"hold {keys.shape[1]} key embeddings per query but this head was built with "
                                        f"num_keys={self.num_keys}: sample num_keys key images per query (or build "
                                        f"the head with num_keys={keys.shape[1]})")
        labels = labels.long()
        # A nan here would also enter the container and make every later batch's loss nan until its
        # slot is overwritten. One host sync on two sums (nan and inf carry through a sum), with no
        # B x D or B x K x D temporary: the step's memory is what the memory model of lesson 02 counts.
        if not bool(torch.isfinite(embeddings.detach().sum() + keys.sum())):
            for name, tensor in (("embeddings", embeddings.detach()), ("keys", keys)):
                if not bool(torch.isfinite(tensor).all()):  # not just a sum that overflowed
                    raise ArgumentError(name, "hold nan or inf; the container was left unchanged. Find where they "
                                              "come from (a diverging encoder: lower --lr, check the images), or "
                                              "resume from the last checkpoint")
        q = F.normalize(embeddings, dim=1)
        with torch.no_grad():
            weights, gcc = generative_class_centres(q.detach(), keys.to(q.dtype), self.temperature)
        loss = attfc_loss(q, gcc, self.container.centres, self.container.labels, labels, self.margin,
                          self.container.is_full(), self.mask_own)
        if self.training:
            self.container.enqueue(*((gcc, labels) if self.gather is None else self.gather(gcc, labels)))
        self.last_weights = weights
        return loss

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, num_keys={self.num_keys}, "
                f"temperature={self.temperature}" + ("" if self.mask_own else ", mask_own=False"))
