"""Rendering stage 3: the degradations (downscale, occlusion, blur, noise) that set an image's
ground-truth quality, as the `FaceWorld` methods of `_Degradations`, and their strengths at severity 1 (lesson 00).
"""
from __future__ import annotations

import math

import torch

from .canvas import DEFAULT_IMAGE_SIZE, _Canvas, _col, _paint, _sigmoid
from .params import _NOISE, _hash

# Physical strength of each degradation at severity 1: blur sigma and downscale factor in pixels
# of a 32x32 image (scaled with the image size), noise std per pixel, occluded fraction of the image.
MAX_BLUR_SIGMA = 1.6
MAX_NOISE_STD = 0.15
MAX_DOWNSCALE = 4.0
MAX_OCCLUSION = 0.3


class _Degradations:
    """`FaceWorld`'s degradation stages (a base class of it), in the order a camera would add them."""

    # -- degradations -----------------------------------------------------------------
    @staticmethod
    def _degrade_downscale(c: _Canvas, sp) -> tuple[torch.Tensor, torch.Tensor]:
        """Downscale: the factor [n] (relative to 32x32) and the coarse grid [n, size] of points (in [-1, 1]) the camera samples."""
        size = c.size
        # Point-sampled low resolution, shown at full size. The factor is relative to a 32x32
        # image, as the blur's sigma is: a factor of 2 keeps 16x16 of detail at any size.
        down = 1.0 + (MAX_DOWNSCALE - 1.0) * sp["d_down"]
        # Below 1.25x a point-sampled downscale is invisible and would only shift edges by a
        # fraction of a pixel (as blur below sigma 0.3 is skipped).
        down = torch.where(down < 1.25, torch.ones_like(down), down)
        # One coarse cell in this image's pixels: one pixel (the image's own grid) when there is
        # no downscale, and never less.
        cell = torch.where(down > 1, down * (size / DEFAULT_IMAGE_SIZE), torch.ones_like(down)).clamp(min=1.0).view(-1, 1)
        cells = torch.arange(size, device=c.device, dtype=torch.float32)
        # Cell centres (c + 0.5), so a factor of 1 + tiny leaves the grid where it was.
        coarse = (torch.floor((cells.view(1, -1) + 0.5) / cell) + 0.5) * cell
        return down, coarse.clamp(max=size - 0.5) / size * 2 - 1

    @staticmethod
    def _degrade_occlusion(c: _Canvas, img, sp) -> tuple[torch.Tensor, torch.Tensor]:
        """Occlusion: a solid rectangle over part of the picture; returns the image and the occluded fraction [n]."""
        occ = MAX_OCCLUSION * sp["d_occ"] * (sp["d_occ"] > 0.1)
        if bool((occ > 0).any()):
            x, y, px = c.x, c.y, c.px
            area = occ * 4.0  # fraction of the [-1, 1]^2 image
            half_w, half_h = torch.sqrt(area * sp["occ_aspect"]) / 2, torch.sqrt(area / sp["occ_aspect"]) / 2
            box = _sigmoid((_col(half_w) - (x - _col(sp["occ_x"])).abs()) / px) * _sigmoid(
                (_col(half_h) - (y - _col(sp["occ_y"])).abs()) / px
            )
            _paint(img, box * _col((occ > 0).float()), torch.stack([sp["occ_r"], sp["occ_g"], sp["occ_b"]], 1))
        return img, occ

    @staticmethod
    def _degrade_blur(c: _Canvas, img, sp) -> tuple[torch.Tensor, torch.Tensor]:
        """Blur: a Gaussian of sigma [n] pixels (scaled with the image size); returns the image and sigma."""
        sigma = MAX_BLUR_SIGMA * sp["d_blur"] * c.size / DEFAULT_IMAGE_SIZE
        return _blur(img, sigma), sigma

    def _degrade_noise(self, c: _Canvas, img, sp, ids, img_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Sensor noise: per-pixel triangular noise (unit variance, from the hash) times std [n]; returns the image and std."""
        noise = MAX_NOISE_STD * sp["d_noise"]
        noisy = torch.nonzero(noise > 0.004).squeeze(1)
        if noisy.numel():
            size = c.size
            pixel = torch.arange(3 * size * size, device=c.device).view(1, -1)
            h = _hash(self.seed, _NOISE, ids[noisy].view(-1, 1), img_ids[noisy].view(-1, 1), pixel)
            tri = ((h & 0xFFFF) + (h >> 16)).to(torch.float32) * (math.sqrt(6.0) / 65536.0) - math.sqrt(6.0)
            img[noisy] += tri.view(-1, 3, size, size) * noise[noisy].view(-1, 1, 1, 1)
        return img, noise


def _blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (support ceil(3 sigma), edges replicated).

    Written as a sum of shifted copies over a fixed number of taps (set by the largest sigma
    the image size allows, not by the batch), each tap one multiply and one add per pixel: so
    an image blurs to the same bits whatever else is in its batch. A convolution would pick
    its algorithm, and its order of summation, from the batch's shape.
    """
    need = sigma > 0.3
    if not bool(need.any()):
        return img
    idx = torch.nonzero(need).squeeze(1)
    sub, s = img[idx], sigma[idx]
    size = img.shape[-1]
    radius = int(math.ceil(3 * MAX_BLUR_SIGMA * size / DEFAULT_IMAGE_SIZE))
    t = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / s.view(-1, 1)) ** 2)
    k = k * (t.abs().view(1, -1) <= torch.ceil(3 * s).view(-1, 1))  # each image keeps its own support
    total = k[:, 0].clone()
    for j in range(1, k.shape[1]):  # an explicit sum: the same order for every image
        total = total + k[:, j]
    k = k / total.view(-1, 1)

    def one_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        padded = torch.cat([x.narrow(dim, 0, 1).expand_as(x.narrow(dim, 0, radius)), x,
                            x.narrow(dim, n - 1, 1).expand_as(x.narrow(dim, 0, radius))], dim)
        shape = [-1, 1, 1, 1]
        out = padded.narrow(dim, 0, n) * k[:, 0].view(shape)
        for j in range(1, 2 * radius + 1):
            out = out + padded.narrow(dim, j, n) * k[:, j].view(shape)
        return out

    out = img.clone()
    out[idx] = one_axis(one_axis(sub, 3), 2)
    return out
