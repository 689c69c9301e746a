"""Partial FC: the full weight matrix, but only a sample of its class centres in each step's logits (lesson 03).

An et al. (insightface's `arcface_torch`, `PartialFC_V2`): each step keeps the positive class
centres of the batch (every identity in it) and fills up to S = max(ceil(sample_rate * N),
number of positives) centres with others drawn uniformly at random; the logits are B x S
instead of B x N, and the labels are renumbered into the sample. With sample_rate = 1 it is
the full FC layer. (insightface takes int(sample_rate * N), rounding down; the two differ by
one centre where sample_rate * N is not whole.)

What it saves and what it cannot: the logits, their gradients and the normalised copy of the
centres shrink from N to S columns; W itself, its gradient and its optimizer state stay
N x D, because every centre must be kept for the steps that will sample it (lesson 03).

Centres that were not sampled in a step (as insightface with `torch.optim.SGD`):
- their gradient is exactly zero (W.grad is a dense N x D tensor, zero on those rows);
- SGD still moves them: their momentum buffer is multiplied by the momentum and applied
  again, so a centre keeps drifting in the direction it last moved, fading geometrically;
- weight decay shrinks them every step, sampled or not (it adds weight_decay * W to the
  gradient of every row).

The sample is drawn from a generator seeded by (seed, step), with the step counter saved in
the state_dict, so a resumed run samples exactly what an uninterrupted one would.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import as_float, as_int
from .base import FullFC
from ..margins import Margin

__all__ = ["PartialFC", "DEFAULT_SAMPLE_RATE"]

DEFAULT_SAMPLE_RATE = 0.1  # insightface's Partial FC default


def sample_centres(positives: torch.Tensor, num_rows: int, num_sample: int, seed: int) -> torch.Tensor:
    """The sorted rows of W in a step's logits: every row in `positives`, and others up to `num_sample`.

    The others are the top of a random permutation (positives get the score 2, above any uniform
    draw, as in insightface), so the draw is uniform among the non-positive rows; `seed` fixes it.
    A model-parallel shard (lesson 10) samples its own rows the same way.
    """
    device = positives.device
    positive = torch.unique(positives)  # sorted
    if positive.numel() >= num_sample:
        return positive
    gen = torch.Generator(device=device).manual_seed(seed)
    score = torch.rand(num_rows, generator=gen, device=device)
    score[positive] = 2.0
    return torch.topk(score, num_sample, sorted=False).indices.sort().values


class PartialFC(FullFC):
    """FullFC's W [num_classes, embedding_dim]; logits over the positives plus a random sample of the rest."""

    def __init__(self, embedding_dim: int, num_classes: int, sample_rate: float = DEFAULT_SAMPLE_RATE,
                 margin: Margin | str = "arcface", seed: int = 0, **margin_kwargs) -> None:
        super().__init__(embedding_dim, num_classes, margin, **margin_kwargs)
        # the share of class centres in each step's logits; 1 is the full FC
        self.sample_rate = as_float("sample_rate", sample_rate, 0, 1, low_open=True)
        self.num_sample = min(self.num_classes, max(1, math.ceil(self.sample_rate * self.num_classes)))
        self.seed = as_int("seed", seed, 0)
        self.step = 0  # steps sampled so far: part of the state_dict (extra state)

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, target): the sorted centres used this step, and each label's column among them."""
        index = sample_centres(labels, self.num_classes, self.num_sample, self.seed * 1_000_003 + self.step)
        return index, torch.searchsorted(index, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        labels = labels.long()
        if not self.training:  # evaluation: the loss over every centre
            return super().forward(embeddings, labels)
        index, target = self.sample(labels)
        self.step += 1
        cosine = self.cosine(embeddings, index)  # W.grad: zero on the rows not in index
        return F.cross_entropy(self.margin(cosine, target), target)

    def get_extra_state(self) -> dict:
        return {"step": self.step}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sample_rate={self.sample_rate}, num_sample={self.num_sample}"


def plot_sample(head: PartialFC, labels: torch.Tensor, ax=None):
    """One step's choice as a strip of the N class centres: positives, sampled negatives, the rest."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    index, _ = head.sample(labels)
    positives = torch.unique(labels)
    kind = torch.zeros(head.num_classes)
    kind[index] = 1
    kind[positives] = 2
    ax = ax or plt.subplots(figsize=(9, 1.4))[1]
    colours = ["#e8e8e8", "#1f77b4", "#d62728"]
    from matplotlib.colors import ListedColormap

    ax.imshow(kind.view(1, -1).numpy(), aspect="auto", cmap=ListedColormap(colours), vmin=0, vmax=2,
              interpolation="nearest")
    ax.set_yticks([])
    ax.set_ylabel("this step", fontsize=8)
    ax.set_xlabel("class centre index (row of W)")
    ax.set_title(f"one Partial FC step: {len(positives)} positives + "
                 f"{index.numel() - len(positives)} sampled negatives = {index.numel()} of "
                 f"{head.num_classes} centres in the logits")
    ax.legend(handles=[Patch(color=c, label=t) for c, t in zip(colours[::-1], ("positive (label in the batch)",
                                                                                 "sampled negative", "not in this step"))],
              loc="upper center", bbox_to_anchor=(0.5, -0.55), ncol=3, fontsize=8, frameon=False)
    return ax
