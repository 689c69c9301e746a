"""The canvas the stages draw on: the pixel grid in face coordinates, the head pose, the palette,
and the bit-exact primitives (`_sigmoid`, `_pow`, `_paint`, ellipses) that every stage paints with (lesson 00).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_IMAGE_SIZE = 32


# Bit-exact whatever the batch: PyTorch's CPU kernels for sigmoid and pow compute the last
# few elements of a tensor with the scalar C library and the rest with SIMD code, which can
# differ in the last bit, so a face would depend on its place in the batch. exp and log
# (vectorised to the very end) and + - * / sqrt (exact everywhere) do not, so these two
# are written with them.
def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.neg(z).exp_().add_(1.0).reciprocal_()


def _pow(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """x ** exponent for x >= 0 (log(0) = -inf gives exp(-inf) = 0)."""
    return torch.exp(exponent * torch.log(x))


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _paint(img: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> None:
    """Alpha-composite `color` [n, 3] over `img` [n, 3, H, W] in place; `alpha` is [n, H, W]."""
    img.lerp_(color[:, :, None, None].expand_as(img), alpha.unsqueeze(1).expand_as(img))


def _col(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1)


@dataclass
class _Canvas:
    """The pixel grid of a chunk in face coordinates ([-1, 1], y down), and the head pose.

    x varies along columns only ([n, 1, size]) and y along rows only ([n, size, 1]), so most
    shapes are sums of a row term and a column term (cheap). Roll, shift and scale are applied
    afterwards as one warp of the finished picture (`FaceWorld._apply_camera`).
    """

    n: int
    size: int
    px: float  # one pixel in face units
    x: torch.Tensor
    y: torch.Tensor
    zero: torch.Tensor
    yaw: torch.Tensor
    pitch: torch.Tensor
    cyaw: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.x.device

    @classmethod
    def make(cls, size: int, sp) -> "_Canvas":
        """The canvas of `size` pixels for the images whose parameters are `sp`."""
        yaw = sp["yaw"]
        n, device = yaw.shape[0], yaw.device
        pix = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
        x, y = pix.view(1, 1, size).expand(n, 1, size), pix.view(1, size, 1).expand(n, size, 1)
        return cls(n, size, 2.0 / size, x, y, torch.zeros(n, device=device), yaw, sp["pitch"], torch.cos(yaw))

    def at(self, x0, depth=0.0):
        """Screen x of a face point at horizontal offset x0 and depth (the yaw turns it)."""
        return x0 * self.cyaw + torch.sin(self.yaw) * depth

    def at_y(self, y0, depth=0.0):
        """Screen y of a face point at height y0 and depth (the pitch tilts it)."""
        return y0 + torch.sin(self.pitch) * depth

    def ellipse(self, cx, cy, rx, ry):
        """Anti-aliased filled ellipse: sigmoid of (1 - d) in units of about one pixel."""
        k = _col(torch.minimum(rx, ry) / (2 * self.px))
        ex = k * ((self.x - _col(cx)) / _col(rx)) ** 2
        ey = k * ((self.y - _col(cy)) / _col(ry)) ** 2 - k
        return _sigmoid(-(ex + ey))


@dataclass
class _Head:
    """Where the head was drawn: the face centre (cx, cy) [n] and the face's alpha mask [n, size, size]."""

    cx: torch.Tensor
    cy: torch.Tensor
    face: torch.Tensor


def _colours(ip, sp) -> dict[str, torch.Tensor]:
    """The palette [n, 3] of each image: the identity's skin, hair, iris and lips, the background, a dark tone."""
    tone = ip["skin"]
    skin = torch.stack([0.93 - 0.55 * tone + ip["skin_r"], 0.78 - 0.52 * tone + ip["skin_g"], 0.66 - 0.48 * tone], 1)
    hair = _hsv_to_rgb(0.02 + 0.1 * ip["hair_h"], 0.35 + 0.4 * ip["hair_h"], 0.1 + 0.8 * ip["hair_v"] * torch.sqrt(ip["hair_v"]))
    iris = _hsv_to_rgb(ip["iris_h"], 0.3 + 0.4 * ip["iris_v"], 0.15 + 0.5 * ip["iris_v"])
    lips = torch.stack([0.55 + 0.3 * ip["lip_h"], 0.22 + 0.1 * ip["lip_h"], 0.25 + 0.1 * ip["lip_h"]], 1)
    lips = lips * (1 - 0.35 * tone[:, None])
    bg = torch.stack([sp["bg_r"], sp["bg_g"], sp["bg_b"]], 1)
    dark = torch.full((tone.shape[0], 3), 0.08, device=tone.device)
    return {"skin": skin, "hair": hair, "iris": iris, "lips": lips, "bg": bg, "dark": dark}
