"""The key encoder: encoder_k follows encoder_q by an exponential moving average (EMA) (lesson 04).

AttFC embeds its key images with a second copy of the backbone, `encoder_k`, that takes no
gradient. It starts as a copy of `encoder_q` (the trained, evaluated backbone) and, at the
start of every step, moves a fraction (1 - momentum) of the way towards it:

    theta_k <- momentum * theta_k + (1 - momentum) * theta_q

so encoder_k is a slowly moving average of encoder_q over the last ~1 / (1 - momentum) steps,
and the GCCs it produces change smoothly from step to step (the container holds GCCs from
many steps back, which must stay comparable with today's queries).

- Momentum: the paper's 0.999 averages over ~1,000 steps, longer than a whole CPU lesson run
  (750 steps), so encoder_k still holds about half of its random initial weights at the end.
  Measured anyway (lesson 04, `data/sweeps/ema_momentum.json`, three seeds): 0.9 loses 8
  points of accuracy; 0.99 and 0.999 are within the seeds' spread on accuracy, but 0.999 is
  clearly better at low false accept rates (TAR@FAR=1e-3 0.170 against 0.100). So the course
  keeps the paper's 0.999.
- BatchNorm: only parameters are averaged, as in the official code. encoder_k runs in train
  mode, so its BatchNorm normalises each key batch by that batch's own statistics (K x B
  images: plenty); its running statistics are updated by its own forward passes but never
  used, because encoder_k is never evaluated: encoder_q is the model that is saved and tested.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .checks import as_float, as_int

__all__ = ["KeyEncoder", "DriftTracker", "DEFAULT_MOMENTUM", "PAPER_MOMENTUM", "check_momentum"]

PAPER_MOMENTUM = 0.999
#: The course's default: the paper's, which the measured sweep of lesson 04 supports even for
#: CPU-length runs of a few hundred steps.
DEFAULT_MOMENTUM = PAPER_MOMENTUM


def check_momentum(momentum: float) -> float:
    """`momentum` as a float, or ValueError naming it."""
    # 0: copy encoder_q every step, 1: never move
    return as_float("momentum", momentum, 0.0, 1.0)


class KeyEncoder(nn.Module):
    """encoder_k: a frozen copy of `encoder_q` moved towards it by `update(encoder_q)`."""

    def __init__(self, encoder_q: nn.Module, momentum: float = DEFAULT_MOMENTUM) -> None:
        super().__init__()
        if not isinstance(encoder_q, nn.Module):
            raise TypeError(f"encoder_q must be a torch.nn.Module, got {type(encoder_q).__name__}")
        self.momentum = check_momentum(momentum)
        self.encoder = copy.deepcopy(encoder_q)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, encoder_q: nn.Module) -> None:
        """One EMA step of the parameters: theta_k <- m * theta_k + (1 - m) * theta_q."""
        mine, theirs = list(self.encoder.parameters()), list(encoder_q.parameters())
        if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            raise ValueError("encoder_q does not have the parameters encoder_k was copied from; "
                             "pass the same backbone the key encoder was built from")
        torch._foreach_mul_(mine, self.momentum)
        torch._foreach_add_(mine, [p.detach() for p in theirs], alpha=1.0 - self.momentum)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of the key images, without gradient."""
        return self.encoder(images)

    @torch.no_grad()
    def drift(self, encoder_q: nn.Module) -> float:
        """||theta_k - theta_q|| / ||theta_q|| over all parameters: how far encoder_k lags."""
        diff = sum(float((k - q).pow(2).sum()) for k, q in zip(self.encoder.parameters(), encoder_q.parameters()))
        norm = sum(float(q.pow(2).sum()) for q in encoder_q.parameters())
        return math.sqrt(diff / max(norm, 1e-30))

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class DriftTracker:
    """A `train(..., callback=)` that keeps extra key encoders at other momenta and records their drift.

    From the first step on, one `KeyEncoder` per momentum follows the run's backbone exactly as
    encoder_k would; after every `every` steps the drift ||theta_k - theta_q|| / ||theta_q|| of
    each is appended to `drift[momentum]` (with the step in `steps`). The run itself is not changed.
    """

    def __init__(self, momenta=(0.9, 0.99, PAPER_MOMENTUM), every: int = 1) -> None:
        self.momenta = [check_momentum(m) for m in momenta]
        self.every = as_int("every", every, 1)
        self.encoders: dict[float, KeyEncoder] = {}
        self.steps: list[int] = []
        self.drift: dict[float, list[float]] = {m: [] for m in self.momenta}

    def __call__(self, state: dict) -> None:
        backbone = state["backbone"]
        if not self.encoders:
            self.encoders = {m: KeyEncoder(backbone, m) for m in self.momenta}
        for m, enc in self.encoders.items():
            enc.update(backbone)
        if state["step"] % self.every == 0:
            self.steps.append(state["step"])
            for m, enc in self.encoders.items():
                self.drift[m].append(enc.drift(backbone))

    def plot(self, ax=None):
        """Drift against the step, one line per momentum, log scale."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
        for m in self.momenta:
            ax.plot(self.steps, self.drift[m], label=f"momentum {m:g} (averages ~{1 / max(1 - m, 1e-12):,.0f} steps)")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("drift ||θ_k − θ_q|| / ||θ_q|| (log scale)")
        ax.set_title("how far encoder_k lags behind encoder_q")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        return ax
