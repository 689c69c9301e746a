"""The world's randomness: a counter-based hash and the parameters it draws for identities and images (lesson 00).

Every number of the face world is a hash of (seed, stream, keys...), so identity 7,654,321 costs
nothing until it is rendered and renders the same on the CPU and on CUDA. `IDENTITY_PARAMS` and
`IMAGE_PARAMS` give each parameter's uniform range; `_draw` draws a whole table for a batch.
"""
from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
# The hash keeps the low 32 bits of every key (`_mix32` starts with `& _M32`), so image index
# j and j + 2**32 (or seed s and s + 2**32) would give the very same image. Within 32 bits
# every step of the hash is a bijection, so all indices below 2**32 give different images.
MAX_IMAGE_INDEX = 2**32 - 1
MAX_SEED = 2**32 - 1

# Streams keep the random numbers of different purposes independent.
_IDENTITY, _IMAGE, _NOISE = 1, 2, 3


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors; exact on every device."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _hash(seed: int, stream: int, *keys: torch.Tensor) -> torch.Tensor:
    """Hash of (seed, stream, keys...) -> int64 in [0, 2^32), broadcasting the keys."""
    h = _mix32(torch.tensor((seed * 0x9E3779B1 + stream * 0x85EBCA77) & _M32, dtype=torch.int64, device=keys[0].device))
    for k in keys:
        h = _mix32(h ^ _mix32(k.to(torch.int64) + 0x27D4EB2F))
    return h


def _uniform(seed: int, stream: int, *keys: torch.Tensor) -> torch.Tensor:
    return _hash(seed, stream, *keys).to(torch.float32) * (1.0 / 2**32)


# name -> (low, high); each identity draws each one uniformly. Order matters (it is the key).
IDENTITY_PARAMS: dict[str, tuple[float, float]] = {
    "face_rx": (0.50, 0.66), "face_ry": (0.66, 0.82), "face_cy": (0.02, 0.12), "jaw": (0.0, 0.45),
    "skin": (0.0, 1.0), "skin_r": (-0.06, 0.06), "skin_g": (-0.06, 0.06),
    "hair_h": (0.0, 1.0), "hair_v": (0.0, 1.0), "hairline": (0.35, 0.75), "hair_curve": (-0.35, 0.5),
    "hair_long": (0.0, 1.0), "hair_volume": (1.0, 1.25), "bald": (0.0, 1.0),
    "eye_dx": (0.17, 0.29), "eye_y": (-0.22, -0.04), "eye_w": (0.07, 0.13), "eye_h": (0.035, 0.07),
    "iris_h": (0.0, 1.0), "iris_v": (0.15, 0.9),
    "brow_gap": (0.07, 0.15), "brow_thick": (0.018, 0.05), "brow_tilt": (-0.35, 0.35), "brow_len": (0.08, 0.15),
    "nose_len": (0.10, 0.22), "nose_w": (0.04, 0.09), "nose_y": (0.08, 0.2),
    "mouth_y": (0.30, 0.46), "mouth_w": (0.10, 0.22), "lip": (0.025, 0.055), "lip_h": (0.0, 1.0),
    "beard": (0.0, 1.0), "glasses": (0.0, 1.0), "mole": (0.0, 1.0), "mole_x": (-0.35, 0.35), "mole_y": (-0.05, 0.35),
    "ear": (0.06, 0.12),
}

IMAGE_PARAMS: dict[str, tuple[float, float]] = {
    "yaw": (-0.55, 0.55), "pitch": (-0.3, 0.3), "roll": (-0.3, 0.3), "dx": (-0.12, 0.12), "dy": (-0.1, 0.1),
    "scale": (0.85, 1.12), "smile": (-0.5, 1.0), "mouth_open": (0.0, 1.0), "eye_open": (0.35, 1.1),
    "brow_raise": (-0.02, 0.04), "gaze_x": (-0.4, 0.4), "light_angle": (0.0, 2 * math.pi),
    "light": (0.0, 0.45), "brightness": (0.7, 1.25), "contrast": (0.75, 1.2),
    "gain_r": (0.88, 1.12), "gain_g": (0.92, 1.08), "gain_b": (0.85, 1.15),
    "bg_r": (0.1, 0.9), "bg_g": (0.1, 0.9), "bg_b": (0.1, 0.9), "bg_grad": (-0.3, 0.3),
    "severity": (0.0, 1.0), "w_blur": (0.0, 1.0), "w_noise": (0.0, 1.0), "w_down": (0.0, 1.0), "w_occ": (0.0, 1.0),
    "occ_x": (-0.5, 0.5), "occ_y": (-0.4, 0.5), "occ_aspect": (0.4, 2.2), "occ_r": (0.0, 1.0), "occ_g": (0.0, 1.0),
    "occ_b": (0.0, 1.0),
}


def _draw(seed: int, stream: int, table: dict, *keys: torch.Tensor) -> dict[str, torch.Tensor]:
    index = torch.arange(len(table), device=keys[0].device)
    u = _uniform(seed, stream, *[k.reshape(-1, 1) for k in keys], index.reshape(1, -1))
    return {name: lo + (hi - lo) * u[:, j] for j, (name, (lo, hi)) in enumerate(table.items())}
