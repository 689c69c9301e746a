"""Margin softmax logits: ArcFace, CosFace and the combined form (lesson 01).

Every margin takes the cosines between embeddings and class centres, shape [B, C], and the
column of each row's positive class (`target`, -1 for a row with no positive column), and
returns scaled logits for cross-entropy. Only the positive logit gets the margin.

The margins here are autograd-native: the gradient is that of the function written down,
s * cos(theta + m) for ArcFace. The official AttFC code (and insightface's arcface_torch)
applies the ArcFace margin in place under no_grad, a straight-through margin: the backward
pass treats the margin as if it were absent, so the gradient of the positive logit is s
instead of s * dcos(theta + m)/dcos(theta). The forward values agree for theta <= pi - m only:
past it the official code keeps s * cos(theta + m), which rises again as theta grows, where
this ArcFace follows the line s * (cos(theta) - m * sin(m)) (`angular_margin`); at
cos(theta) = -0.9, s = 64, m = 0.5 that is -63.92 against -72.94. We use the autograd-native
form because it is the function the loss claims to be, so gradient checks against finite
differences hold; lesson 08 compares the two gradients.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checks import as_float

_EPS = 1e-7


def _check(cosine: torch.Tensor, target: torch.Tensor) -> None:
    if cosine.dim() != 2:
        raise ValueError(f"cosine must be [batch, classes], got shape {tuple(cosine.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be an integer tensor of class indices (int64), got {target.dtype}; use target.long()")
    if target.dim() != 1 or target.shape[0] != cosine.shape[0]:
        raise ValueError(
            f"target must be 1-D with one entry per row of cosine ({cosine.shape[0]}), got shape {tuple(target.shape)}"
        )
    if target.numel() and (int(target.max()) >= cosine.shape[1] or int(target.min()) < -1):
        raise ValueError(
            f"target values must lie in [-1, {cosine.shape[1] - 1}] (-1 = no positive column); "
            f"got min {int(target.min())}, max {int(target.max())}"
        )


def angular_margin(cos: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """cos(m1 * theta + m2) for theta = acos(cos), with a linear fallback past m1 * theta + m2 = pi.

    Past theta_max = (pi - m2) / m1 the angle would wrap round and the logit rise again, so the
    fallback is the line cos(theta) - d * sin(theta_max), d = pi - theta_max (the extra angle at
    theta_max): for ArcFace (m1 = 1) that is cos(theta) - m * sin(m), the rule of insightface's
    earlier ArcFace (its `th` and `mm`; the official AttFC code has no fallback and keeps
    cos(theta + m)). Its slope in cos is 1 everywhere, -1 included (the input is clamped only
    where sqrt or acos need it).
    """
    theta_max = (math.pi - m2) / m1
    inside = cos > math.cos(theta_max)
    fallback = cos - (math.pi - theta_max) * math.sin(theta_max)
    c = cos.clamp(-1 + _EPS, 1 - _EPS)
    if m1 == 1.0:  # cos(theta + m) expanded: no acos, more precise and cheaper
        with_margin = c * math.cos(m2) - torch.sqrt(1.0 - c * c) * math.sin(m2)
    else:
        with_margin = torch.cos(m1 * torch.acos(c) + m2)
    return torch.where(inside, with_margin, fallback)


class Margin(nn.Module):
    """Base: applies `positive_logit` to the target column and scales everything by s."""

    def __init__(self, s: float = 64.0) -> None:
        super().__init__()
        self.s = as_float("s", s, 0, low_open=True)  # the logit scale

    def positive_logit(self, cos_pos: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(cosine, target)
        rows = torch.nonzero(target >= 0).squeeze(1)
        cols = target[rows].long()
        logits = cosine.clone() if rows.numel() else cosine
        if rows.numel():
            logits = logits.index_put((rows, cols), self.positive_logit(cosine[rows, cols]))
        return logits * self.s


class ArcFace(Margin):
    """s * cos(theta + m) on the positive class (additive angular margin).

    When theta + m > pi, cos(theta + m) would start to increase again as theta grows, which
    would reward moving away from the centre; the usual fallback replaces it there by the
    line cos(theta) - m * sin(m), which keeps the logit decreasing in theta (see
    `angular_margin`; the official AttFC code keeps cos(theta + m) there).
    `CombinedMargin(m1=1, m2=m, m3=0)` is the same function, bit for bit.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(s)
        self.m = as_float("m", m, 0, math.pi / 2, high_open=True)  # ArcFace's angle, in radians

    def positive_logit(self, cos_pos: torch.Tensor) -> torch.Tensor:
        return angular_margin(cos_pos, 1.0, self.m)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


class CosFace(Margin):
    """s * (cos(theta) - m) on the positive class (additive cosine margin)."""

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(s)
        self.m = as_float("m", m, 0, 1, high_open=True)  # CosFace's cosine margin

    def positive_logit(self, cos_pos: torch.Tensor) -> torch.Tensor:
        return cos_pos - self.m

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


class CombinedMargin(Margin):
    """s * (cos(m1 * theta + m2) - m3): SphereFace (m1), ArcFace (m2), CosFace (m3) in one.

    Where m1 * theta + m2 > pi the same linear fallback as ArcFace is used (`angular_margin`),
    so the logit keeps decreasing with theta, and m1=1, m3=0 gives exactly `ArcFace(m2)`.
    `make_margin("combined", m=(m1, m2, m3))` builds it from one `m`, as the training config does.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__(s)
        self.m1, self.m2, self.m3 = as_float("m1", m1, 1), as_float("m2", m2, 0), as_float("m3", m3, 0)

    def positive_logit(self, cos_pos: torch.Tensor) -> torch.Tensor:
        return angular_margin(cos_pos, self.m1, self.m2) - self.m3

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


MARGINS = {"arcface": ArcFace, "cosface": CosFace, "combined": CombinedMargin}
#: The usual margin of each: ArcFace 0.5 and CosFace 0.35 (their papers), and insightface's
#: combined (1.0, 0.3, 0.2) (an ArcFace 0.3 plus a CosFace 0.2).
DEFAULT_M = {"arcface": 0.5, "cosface": 0.35, "combined": (1.0, 0.3, 0.2)}


def make_margin(name: str = "arcface", **kwargs) -> Margin:
    """Build a margin by name: 'arcface', 'cosface' or 'combined'.

    Every margin takes `s` and `m`; for 'combined', `m` is the triple (m1, m2, m3) (or pass
    m1, m2, m3 by name).
    """
    key = str(name).lower()
    if key not in MARGINS:
        raise ValueError(f"margin must be one of {sorted(MARGINS)}, got {name!r}")
    if key == "combined" and "m" in kwargs:
        m = kwargs.pop("m")
        if isinstance(m, (int, float)) or len(m) != 3:
            raise ValueError(f"margin 'combined' needs m=(m1, m2, m3), e.g. (1.0, 0.3, 0.2) for ArcFace 0.3 plus "
                             f"CosFace 0.2; got m={m!r}")
        kwargs.update(m1=float(m[0]), m2=float(m[1]), m3=float(m[2]))
    return MARGINS[key](**kwargs)


def plot_margin_curves(s: float = 1.0, ax=None, arcface_m: float = 0.5, cosface_m: float = 0.35):
    """Target logit against the angle theta to the class centre: softmax, CosFace, ArcFace."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.4))[1]
    theta = torch.linspace(0, math.pi, 361)
    cos = torch.cos(theta).view(-1, 1)
    target = torch.zeros(len(theta), dtype=torch.long)
    degrees = torch.rad2deg(theta)
    times = "" if s == 1 else f"{s:g}·"  # the curves are the logits themselves, scale s included
    ax.plot(degrees, s * cos[:, 0], label=f"softmax: {times}cos θ", color="0.4", ls="--")
    ax.plot(degrees, CosFace(s, cosface_m)(cos, target)[:, 0],
            label=f"CosFace: {times}(cos θ − {cosface_m})" if times else f"CosFace: cos θ − {cosface_m}")
    ax.plot(degrees, ArcFace(s, arcface_m)(cos, target)[:, 0],
            label=f"ArcFace: {times}cos(θ + m), m = {arcface_m} rad = {math.degrees(arcface_m):.1f}°")
    ax.set_xlabel("angle θ between embedding and its class centre (degrees)")
    ax.set_ylabel("target logit" + (f" (scale s = {s:g})" if s != 1 else " (s = 1: a cosine)"))
    limit = 180 - math.degrees(arcface_m)
    ax.axvline(limit, color="0.8", lw=0.8, label=f"θ = π − m = {limit:.1f}° (ArcFace fallback)")
    ax.set_title("the target logit with and without a margin", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_margin_2d(m: float = 0.5, angle_between: float = 80.0, ax=None):
    """Two class centres on the unit circle: softmax's single boundary vs ArcFace's two.

    With plain softmax a point belongs to the nearer centre (one boundary at the bisector).
    ArcFace asks the angle to the own centre plus m to be smaller than the angle to the
    other: each class keeps a wedge of half-width (gap / 2 - m / 2), leaving an empty
    margin of m radians between the two decision boundaries.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4, 4))[1]
    half = math.radians(angle_between) / 2
    t = torch.linspace(0, 2 * math.pi, 400)
    ax.plot(torch.cos(t), torch.sin(t), color="0.7", lw=1, label="unit circle")
    centres = {"class 1": math.pi / 2 + half, "class 2": math.pi / 2 - half}
    for (name, a), color in zip(centres.items(), ("C0", "C1")):
        ax.annotate("", (math.cos(a), math.sin(a)), (0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2))
        ax.text(1.12 * math.cos(a), 1.12 * math.sin(a), name, color=color, ha="center", va="center")
        ax.plot([], [], color=color, lw=2, label=f"{name} centre")  # the arrow's legend entry
    mid = math.pi / 2
    ax.plot([0, 1.05 * math.cos(mid)], [0, 1.05 * math.sin(mid)], "k--", lw=1, label="softmax boundary")
    for sign in (-1, 1):
        b = mid + sign * m / 2
        ax.plot([0, 1.05 * math.cos(b)], [0, 1.05 * math.sin(b)], color="C3", lw=1.5,
                label="ArcFace boundaries" if sign < 0 else None)
    wedge = torch.linspace(mid - m / 2, mid + m / 2, 50)
    ax.fill(torch.cat([torch.zeros(1), torch.cos(wedge)]), torch.cat([torch.zeros(1), torch.sin(wedge)]),
            color="C3", alpha=0.15, label=f"margin m = {m} rad")
    ax.set_aspect("equal")
    ax.set_xlim(-1.3, 1.3), ax.set_ylim(-0.9, 1.3)  # below 0: room for the legend
    ax.set_xlabel("embedding coordinate 1 (unit length)")
    ax.set_ylabel("embedding coordinate 2 (unit length)")
    ax.set_title(f"decision boundaries of two classes {angle_between:g}° apart", fontsize=10)
    ax.legend(loc="lower center", fontsize=7, ncol=2)
    return ax
