"""The synthetic face world: millions of identities rendered on demand, with known quality.

An identity is a vector of latent face parameters (face shape, skin, hair, eyes, brows,
nose, mouth, beard, glasses, a mole) drawn deterministically from (seed, identity index)
by a counter-based hash, so identity 7,654,321 costs nothing until it is rendered and
renders the same on the CPU and on CUDA. Each image of an identity adds nuisance (pose,
shift, rotation, scale, expression, lighting, colour, background) and a degradation (blur,
noise, downscaling, occlusion) whose ground-truth quality score in [0, 1] comes with it.

Everything is vectorised over the batch in plain torch ops, so `render` runs wherever the
index tensors live. `FaceWorld._render` runs in named stages: the face (`_draw_background`,
`_draw_head`, then the features `_draw_beard`, `_draw_eyes`, `_draw_nose`, `_draw_mouth`,
`_draw_mole`), the photo's nuisance (`_apply_lighting`, `_apply_camera`), and the degradations
(`_degrade_downscale`, `_degrade_occlusion`, `_degrade_blur`, `_degrade_noise`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import ArgumentError, as_float, as_int

MAX_IDENTITIES = 10_000_000
DEFAULT_IMAGE_SIZE = 32

_M32 = 0xFFFFFFFF
# The hash keeps the low 32 bits of every key (`_mix32` starts with `& _M32`), so image index
# j and j + 2**32 (or seed s and s + 2**32) would give the very same image. Within 32 bits
# every step of the hash is a bijection, so all indices below 2**32 give different images.
MAX_IMAGE_INDEX = 2**32 - 1
MAX_SEED = 2**32 - 1

# A render's temporaries grow with its pixels: 60-90 bytes a pixel (measured), about 70 KiB for a
# 32-pixel image and 850 KiB for a 112-pixel one. Chunk sizes are given for 32-pixel images and
# scaled by (32 / image_size)^2 (`scaled_chunk`), so that a chunk's temporaries take the same
# bytes at any size. On a CPU, chunks of a few hundred 32-pixel images keep every temporary in
# the cache: about 5x faster than one huge batch, whose element-wise ops are memory-bound. An
# accelerator wants large chunks to keep busy, and gets about 1 GiB of temporaries.
_CPU_CHUNK = 512
_DEVICE_CHUNK = 16384

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

# Physical strength of each degradation at severity 1: blur sigma and downscale factor in pixels
# of a 32x32 image (scaled with the image size), noise std per pixel, occluded fraction of the image.
MAX_BLUR_SIGMA = 1.6
MAX_NOISE_STD = 0.15
MAX_DOWNSCALE = 4.0
MAX_OCCLUSION = 0.3


def _draw(seed: int, stream: int, table: dict, *keys: torch.Tensor) -> dict[str, torch.Tensor]:
    index = torch.arange(len(table), device=keys[0].device)
    u = _uniform(seed, stream, *[k.reshape(-1, 1) for k in keys], index.reshape(1, -1))
    return {name: lo + (hi - lo) * u[:, j] for j, (name, (lo, hi)) in enumerate(table.items())}


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
class RenderOutput:
    """A rendered batch: images [n, 3, H, W] in [0, 1], quality [n] in [0, 1], and the
    per-image degradation strengths (for the lessons' plots)."""

    images: torch.Tensor
    quality: torch.Tensor
    blur_sigma: torch.Tensor
    noise_std: torch.Tensor
    downscale: torch.Tensor
    occlusion: torch.Tensor


class FaceWorld:
    """Renders image `j` of identity `i` for any i < 10,000,000 and j < 2**32, deterministically.

    >>> world = FaceWorld(seed=0, image_size=32)
    >>> out = world.render(torch.tensor([0, 0, 5]), torch.tensor([0, 1, 0]))
    >>> out.images.shape, out.quality.shape
    (torch.Size([3, 3, 32, 32]), torch.Size([3]))
    """

    def __init__(self, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, max_severity: float = 1.0) -> None:
        self.seed = as_int("seed", seed, 0, MAX_SEED)  # the hash keeps 32 bits: s + 2**32 would be world s
        self.image_size = as_int("image_size", image_size, 8, 512)
        self.max_severity = as_float("max_severity", max_severity, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"FaceWorld(seed={self.seed}, image_size={self.image_size}, max_severity={self.max_severity})"

    # -- splits -------------------------------------------------------------------------
    @staticmethod
    def train_identities(num_identities: int, offset: int = 0) -> torch.Tensor:
        """Training identities count up from 0; evaluation ones count down from the top."""
        num_identities = _check_count("num_identities", num_identities)
        offset = _check_offset(offset, num_identities)
        return torch.arange(offset, offset + num_identities, dtype=torch.int64)

    @staticmethod
    def eval_identities(num_identities: int, offset: int = 0) -> torch.Tensor:
        """Identities from the top of the id space, disjoint from `train_identities` as long as
        the two counts add up to less than 10,000,000."""
        num_identities = _check_count("num_identities", num_identities)
        offset = _check_offset(offset, num_identities)
        top = MAX_IDENTITIES - 1 - offset
        return torch.arange(top, top - num_identities, -1, dtype=torch.int64)

    # -- parameters ---------------------------------------------------------------------
    def identity_params(self, identities: torch.Tensor) -> dict[str, torch.Tensor]:
        identities = _check_ids(identities)
        return _draw(self.seed, _IDENTITY, IDENTITY_PARAMS, identities)

    def image_params(self, identities: torch.Tensor, image_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        identities = _check_ids(identities)
        image_indices = _check_image_indices(image_indices, identities.device)
        identities, image_indices = torch.broadcast_tensors(identities, image_indices)
        p = _draw(self.seed, _IMAGE, IMAGE_PARAMS, identities, image_indices)
        # Most images are fine, some are bad: severity skews towards 0 (as in real datasets).
        p["severity"] = self.max_severity * _pow(p["severity"], 1.6)
        w = torch.stack([p["w_blur"], p["w_noise"], p["w_down"], p["w_occ"]], 1) ** 3
        w = w / w.max(dim=1, keepdim=True).values
        for j, name in enumerate(("blur", "noise", "down", "occ")):
            p["d_" + name] = p["severity"] * w[:, j]
        return p

    def quality(self, identities: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
        """Ground-truth quality of images without rendering them: 1 - severity."""
        return 1.0 - self.image_params(identities, image_indices)["severity"]

    # -- rendering ----------------------------------------------------------------------
    def render(self, identities: torch.Tensor, image_indices: torch.Tensor, device=None) -> RenderOutput:
        """Render image `image_indices[k]` of identity `identities[k]` for every k.

        `device`: where to render ('cpu', 'cuda', 'cuda:N', 'auto'); None: where `identities` are.
        Any number of images: they are rendered in chunks whose temporaries stay bounded
        (`render_chunk`: about 35 MiB on a CPU, 1 GiB on an accelerator, at any image size),
        into outputs allocated once. The outputs themselves, 12 bytes a pixel, are the
        caller's: for more images than fit, call `render_images` (uint8) or loop over slices.
        """
        identities = _check_ids(torch.as_tensor(identities))
        device = _check_device(device) if device is not None else identities.device
        identities = identities.to(device)
        image_indices = _check_image_indices(image_indices, device)
        if image_indices.dim() == 0:
            image_indices = image_indices.expand_as(identities)
        if image_indices.shape != identities.shape:
            raise ArgumentError(
                "image_indices", f"must match identities in shape, got {tuple(image_indices.shape)} vs "
                                 f"{tuple(identities.shape)}")
        n = identities.numel()
        chunk = render_chunk(self.image_size, device)
        if n <= chunk:
            return self._render_params(identities, image_indices)
        out = None
        for start in range(0, n, chunk):
            part = self._render_params(identities[start:start + chunk], image_indices[start:start + chunk])
            if out is None:  # filled in place: a concatenation would hold every image twice
                out = RenderOutput(*(t.new_empty((n, *t.shape[1:])) for t in vars(part).values()))
            for name, t in vars(part).items():
                getattr(out, name)[start:start + t.shape[0]] = t
        return out

    def _render_params(self, ids: torch.Tensor, img_ids: torch.Tensor) -> RenderOutput:
        """One chunk of checked ids and image indices, with their parameters drawn."""
        return self._render(ids, img_ids, self.identity_params(ids), self.image_params(ids, img_ids))

    def _render(self, ids, img_ids, ip, sp) -> RenderOutput:
        """One chunk, stage by stage: draw the face (identity + expression), then the nuisance of
        the photo (lighting, camera), then the degradations (downscale, occlusion, blur, noise)."""
        c = _Canvas.make(self.image_size, sp)
        colours = _colours(ip, sp)
        # 1. The face: background, head (geometry and hair), then the identity's features.
        img = self._draw_background(c, sp, colours)
        head = self._draw_head(c, img, ip, colours)
        self._draw_beard(c, img, ip, head, colours)
        self._draw_eyes(c, img, ip, sp, head, colours)
        self._draw_nose(c, img, ip, head, colours)
        self._draw_mouth(c, img, ip, sp, head, colours)
        self._draw_mole(c, img, ip, head, colours)
        # 2. Nuisance of the photo (pose and expression are drawn above).
        img = self._apply_lighting(c, img, sp)
        down, grid = self._degrade_downscale(c, sp)  # the camera samples on this (coarser) grid
        img = self._apply_camera(c, img, sp, grid)
        # 3. The remaining degradations, in the order a camera would add them.
        img, occ = self._degrade_occlusion(c, img, sp)
        img, sigma = self._degrade_blur(c, img, sp)
        img, noise = self._degrade_noise(c, img, sp, ids, img_ids)
        img = img.clamp_(0, 1)
        return RenderOutput(img, 1.0 - sp["severity"], sigma, noise, down, occ)

    # -- the face ---------------------------------------------------------------------
    @staticmethod
    def _draw_background(c: _Canvas, sp, colours) -> torch.Tensor:
        """A new canvas filled with the image's background colour and its vertical gradient."""
        bg = colours["bg"]
        return (bg[:, :, None, None] * (1 + _col(sp["bg_grad"]) * c.y).unsqueeze(1)).expand(
            c.n, 3, c.size, c.size).contiguous()

    @staticmethod
    def _draw_head(c: _Canvas, img, ip, colours) -> _Head:
        """Paint long hair, neck, ears, the face (with its jaw) and the hair on top; return the head's geometry."""
        x, y, px = c.x, c.y, c.px
        skin, hair = colours["skin"], colours["hair"]
        face_cx, face_cy = c.at(c.zero, 0.08), ip["face_cy"]
        rx, ry = ip["face_rx"] * (0.88 + 0.12 * c.cyaw), ip["face_ry"]

        # Long hair behind the head, neck, ears.
        long_hair = ((ip["hair_long"] > 0.6) & (ip["bald"] > 0.12)).float()
        if bool(long_hair.any()):
            back = c.ellipse(face_cx, face_cy + 0.12, rx * 1.22 * ip["hair_volume"], ry * 1.12)
            _paint(img, back * _col(long_hair), hair)
        _paint(img, c.ellipse(face_cx, face_cy + ry * 0.95, rx * 0.55, ry * 0.6), skin * 0.82)
        for side in (-1.0, 1.0):
            ear = c.ellipse(c.at(side * (ip["face_rx"] + 0.01)), face_cy + 0.02, ip["ear"] * 0.7, ip["ear"] * 1.4)
            _paint(img, ear * _col(1 - long_hair), skin * 0.9)
        # Face: the jaw narrows the lower half (a row-dependent width).
        below = torch.relu(y - _col(face_cy)) / _col(ry)
        width = _col(rx) * (1 - _col(ip["jaw"]) * below**2)
        k = _col(torch.minimum(rx, ry) / (2 * px))
        face = _sigmoid(k - k * ((x - _col(face_cx)) ** 2 / width**2 + ((y - _col(face_cy)) / _col(ry)) ** 2))
        _paint(img, face, skin)

        # Hair on top: the head ellipse above an identity-specific hairline.
        has_hair = (ip["bald"] > 0.12).float()
        hairline = _col(face_cy - ry * ip["hairline"]) + _col(ip["hair_curve"]) * (x - _col(face_cx)) ** 2
        top = c.ellipse(face_cx, face_cy - 0.04, rx * 1.06 * ip["hair_volume"], ry * 1.04)
        _paint(img, top * _sigmoid((hairline - y) / px) * _col(has_hair), hair)
        return _Head(face_cx, face_cy, face)

    @staticmethod
    def _draw_beard(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint a beard (some identities) over the face below the nose."""
        beard = (ip["beard"] > 0.75).float() * (0.55 + 0.45 * (ip["beard"] - 0.75) / 0.25)
        if bool(beard.any()):
            chin = _sigmoid((c.y - _col(c.at_y(head.cy + ip["nose_y"] + 0.12, 0.1))) / (2 * c.px))
            _paint(img, head.face * (chin * _col(beard)), colours["hair"] * 0.8)

    @staticmethod
    def _draw_eyes(c: _Canvas, img, ip, sp, head: _Head, colours) -> None:
        """Paint both eyebrows and eyes (openness, gaze and brow raise are expression) and any glasses."""
        x, y, px, n, cyaw = c.x, c.y, c.px, c.n, c.cyaw
        hair, dark = colours["hair"], colours["dark"]
        eye_y = c.at_y(head.cy + ip["eye_y"], 0.1)
        open_ = sp["eye_open"].clamp(max=1.0)
        glasses = (ip["glasses"] > 0.82).float()
        for side in (-1.0, 1.0):
            ex = c.at(side * ip["eye_dx"], 0.12)
            # Eyebrow: a thin ellipse, sheared by the identity's tilt.
            by = eye_y - ip["brow_gap"] - sp["brow_raise"]
            dxb = x - _col(ex + side * 0.01)
            yr = (y - _col(by)) - _col(side * ip["brow_tilt"]) * dxb
            kb = _col(ip["brow_thick"] / (2 * px))
            brow = _sigmoid(kb - kb * ((dxb / _col(ip["brow_len"] * cyaw)) ** 2 + (yr / _col(ip["brow_thick"])) ** 2))
            _paint(img, brow, hair * 0.7)
            # Eye white, then the iris and pupil clipped to it.
            ew, eh = ip["eye_w"] * cyaw, ip["eye_h"] * open_
            white = c.ellipse(ex, eye_y, ew, eh)
            _paint(img, white, torch.full((n, 3), 0.92, device=c.device))
            iris_x, ir = ex + sp["gaze_x"] * ew * 0.5, ip["eye_h"] * 0.95
            _paint(img, white * c.ellipse(iris_x, eye_y, ir, ir), colours["iris"])
            _paint(img, white * c.ellipse(iris_x, eye_y, ir * 0.45, ir * 0.45), dark)
            if bool(glasses.any()):
                gr = ip["eye_w"] * 1.35
                ring = c.ellipse(ex, eye_y, gr * cyaw, gr * 0.8) - c.ellipse(ex, eye_y, gr * cyaw * 0.82, gr * 0.62)
                _paint(img, ring.clamp(0, 1) * _col(glasses), dark)

    @staticmethod
    def _draw_nose(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint the nose: a shaded ridge and the nostrils."""
        skin = colours["skin"]
        nose_x, nose_y = c.at(c.zero, 0.22), c.at_y(head.cy + ip["nose_y"], 0.2)
        ridge = c.ellipse(nose_x, nose_y - ip["nose_len"] * 0.4, ip["nose_w"] * 0.6, ip["nose_len"] * 0.6)
        _paint(img, ridge * 0.45, skin * 0.72)
        _paint(img, c.ellipse(nose_x, nose_y, ip["nose_w"] * 1.2, ip["nose_w"] * 0.45) * 0.6, skin * 0.55)

    @staticmethod
    def _draw_mouth(c: _Canvas, img, ip, sp, head: _Head, colours) -> None:
        """Paint the mouth: a curved band; a smile bends it, an open mouth shows the dark inside."""
        x, y, px = c.x, c.y, c.px
        mx, my = c.at(c.zero, 0.15), c.at_y(head.cy + ip["mouth_y"], 0.1)
        mw = ip["mouth_w"] * c.cyaw
        bend = _col(my) - _col(sp["smile"] * 0.12) * (x - _col(mx)) ** 2 / _col(mw)
        thick = ip["lip"] * (1 + sp["mouth_open"] * 0.8)
        km = _col(thick / (2 * px))
        dxm = ((x - _col(mx)) / _col(mw)) ** 2
        _paint(img, _sigmoid(km - km * (dxm + ((y - bend) / _col(thick)) ** 2)), colours["lips"])
        inner_h = thick * sp["mouth_open"] * 0.6 + 1e-3
        ki = _col(inner_h / (2 * px))
        _paint(img, _sigmoid(ki - ki * (dxm / 0.64 + ((y - bend) / _col(inner_h)) ** 2)), colours["dark"] * 1.5)

    @staticmethod
    def _draw_mole(c: _Canvas, img, ip, head: _Head, colours) -> None:
        """Paint a mole (some identities) on the face."""
        mole = (ip["mole"] > 0.7).float()
        if bool(mole.any()):
            spot = c.ellipse(c.at(ip["mole_x"], 0.1), head.cy + ip["mole_y"], c.zero + 0.03, c.zero + 0.03)
            _paint(img, head.face * spot * _col(mole), colours["skin"] * 0.45)

    # -- nuisance of the photo --------------------------------------------------------
    @staticmethod
    def _apply_lighting(c: _Canvas, img, sp) -> torch.Tensor:
        """Lighting (a directional gradient), brightness, contrast and white balance, as one affine map."""
        light = _col(sp["brightness"]) + _col(sp["light"]) * (
            _col(torch.cos(sp["light_angle"])) * c.x + _col(torch.sin(sp["light_angle"])) * c.y
        )
        gain = torch.stack([sp["gain_r"], sp["gain_g"], sp["gain_b"]], 1)
        k = sp["contrast"][:, None] * gain
        return img * light.unsqueeze(1) * k[:, :, None, None] + ((0.5 - 0.5 * sp["contrast"])[:, None] * gain)[:, :, None, None]

    @staticmethod
    def _apply_camera(c: _Canvas, img, sp, grid: torch.Tensor) -> torch.Tensor:
        """Camera roll, scale and shift as one bilinear warp, sampled at the points `grid` [n, size] (see `_degrade_downscale`)."""
        n, size = c.n, c.size
        u, v = grid.view(n, 1, size), grid.view(n, size, 1)
        cr, sr = _col(torch.cos(sp["roll"])), _col(torch.sin(sp["roll"]))
        uu, vv = u - _col(sp["dx"]), v - _col(sp["dy"])
        gx = (cr * uu + sr * vv) / _col(sp["scale"])
        gy = (-sr * uu + cr * vv) / _col(sp["scale"])
        return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)

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


def check_disjoint_splits(train_ids: torch.Tensor, eval_ids: torch.Tensor) -> None:
    """Raise ValueError if an identity of the world is in both the training and the evaluation split.

    Verification is meant for identities never seen in training; with identity offsets, the
    split counted up from the bottom and the one counted down from the top can meet.
    """
    train_ids, eval_ids = torch.as_tensor(train_ids).reshape(-1).cpu(), torch.as_tensor(eval_ids).reshape(-1).cpu()
    shared = train_ids[torch.isin(train_ids, eval_ids)]
    if shared.numel():
        raise ValueError(
            f"the training and evaluation identities overlap: {shared.numel()} shared (world ids "
            f"{int(shared.min())}..{int(shared.max())}); choose identity_offset values (or counts) that keep the "
            f"training ids [offset, offset + n) below the evaluation ids (counted down from {MAX_IDENTITIES - 1:,} - offset)"
        )


def _check_count(name: str, value: int) -> int:
    return as_int(name, value, 1, MAX_IDENTITIES)


def _check_offset(offset: int, num_identities: int) -> int:
    top = MAX_IDENTITIES - num_identities
    offset = as_int("identity_offset", offset)  # a whole number first: 10.7 is refused, not truncated
    if not 0 <= offset <= top:
        raise ArgumentError("identity_offset", f"must be in [0, {MAX_IDENTITIES:,} - num_identities = {top:,}] so "
                                               f"that every id exists, got {offset:,}")
    return offset


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _index_tensor(name: str, values, what: str) -> torch.Tensor:
    """`values` as an integer tensor, refusing floats (1.7 would be truncated) and bools."""
    try:
        t = torch.as_tensor(values)
    except (RuntimeError, OverflowError, TypeError, ValueError) as exc:  # e.g. a Python int >= 2**63
        raise ArgumentError(name, f"must be integers ({what}), got {values!r}: {exc}") from None
    if t.dtype not in _INDEX_DTYPES:
        raise ArgumentError(name, f"must be an integer tensor ({what}), got dtype {t.dtype}; "
                                  f"use torch.tensor([...]) of whole numbers or .long()")
    return t


def _check_device(device) -> torch.device:
    """A device that can render: 'cpu', 'cuda[:N]' when present, or 'auto' (`utils.default_device`,
    an ArgumentError naming `device` otherwise: 'meta' holds no data, so nothing can be drawn there)."""
    from .utils import default_device

    return default_device(device)


def _check_ids(identities) -> torch.Tensor:
    """Identities as a flat int64 tensor, each in [0, MAX_IDENTITIES)."""
    identities = _index_tensor("identities", identities, "identity ids").to(torch.int64).reshape(-1)
    if identities.numel() and (int(identities.min()) < 0 or int(identities.max()) >= MAX_IDENTITIES):
        raise ArgumentError(
            "identities", f"must lie in [0, {MAX_IDENTITIES:,}); got min {int(identities.min()):,}, "
                          f"max {int(identities.max()):,}")
    return identities


def _check_image_indices(image_indices, device) -> torch.Tensor:
    """Image indices as an int64 tensor on `device` (shape kept), each in [0, MAX_IMAGE_INDEX]."""
    idx = _index_tensor("image_indices", image_indices, "the image number of each identity").to(device, torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > MAX_IMAGE_INDEX):
        raise ArgumentError(
            "image_indices", f"must lie in [0, 2**32 - 1 = {MAX_IMAGE_INDEX:,}] (the hash keeps 32 bits of an "
                             f"index, so j and j + 2**32 would be the same image); got min {int(idx.min()):,}, "
                             f"max {int(idx.max()):,}")
    return idx


class SyntheticFaces(torch.utils.data.Dataset):
    """A split of the face world rendered once into memory: (image, label, quality) items.

    `split='train'` takes identities 0..num_identities-1, `split='eval'` identities counted
    down from 9,999,999, so the two never share an identity. Labels are 0..num_identities-1
    within the split; `identity_ids` keeps the world's ids. Images are stored as uint8
    (3 KB each at 32x32) and returned as float in [0, 1].
    """

    def __init__(self, num_identities: int = 1000, images_per_identity: int = 16, split: str = "train",
                 image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, world: FaceWorld | None = None,
                 identity_offset: int = 0, progress: bool = False, device=None) -> None:
        if split not in ("train", "eval"):
            raise ArgumentError("split", f"must be 'train' or 'eval', got {split!r}")
        # Image indices 0..images_per_identity-1 must stay within the hash's 32 bits.
        images_per_identity = as_int("images_per_identity", images_per_identity, 1, MAX_IMAGE_INDEX + 1)
        num_identities = _check_count("num_identities", num_identities)
        self.world = world if world is not None else FaceWorld(seed=seed, image_size=image_size)
        pick = FaceWorld.train_identities if split == "train" else FaceWorld.eval_identities
        self.split = split
        self.identity_ids = pick(num_identities, identity_offset)
        self.images_per_identity = images_per_identity
        self.labels = torch.arange(num_identities).repeat_interleave(self.images_per_identity)
        self.image_indices = torch.arange(self.images_per_identity).repeat(num_identities)
        self._prepare(progress, device)

    def _prepare(self, progress: bool, device) -> None:
        self.images, self.quality = render_images(self.world, self.identity_ids[self.labels], self.image_indices,
                                                  progress=progress, device=device)

    @property
    def num_classes(self) -> int:
        return int(self.identity_ids.numel())

    def __len__(self) -> int:
        return int(self.labels.numel())

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (float, [0, 1]), labels and qualities of many items at once (no DataLoader)."""
        return self.images[indices].float().div_(255), self.labels[indices], self.quality[indices]

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self.images[index].float() / 255, int(self.labels[index]), float(self.quality[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, identities={self.num_classes}, "
                f"images_per_identity={self.images_per_identity}, image_size={self.world.image_size})")


class StreamedFaces(SyntheticFaces):
    """The same split as `SyntheticFaces`, with no images kept: each batch is rendered when asked.

    Memory stays at the labels (8 bytes an image), whatever the number of identities; the
    images are the very ones `SyntheticFaces` would hold (rendering is batch-independent, and
    they are rounded to 8 bits the same way). Rendering runs on `device` (the GPU when given)
    and costs time at every step instead of once.
    """

    def _prepare(self, progress: bool, device) -> None:
        self.device = device  # nothing rendered now

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (float, [0, 1]; on `device`), labels and qualities of the items `indices`, rendered now."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        images, quality = render_images(self.world, self.identity_ids[self.labels[indices]],
                                        self.image_indices[indices], device=self.device, keep_on_device=True)
        return images.to(self.device).float().div_(255), self.labels[indices], quality

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        images, labels, quality = self.get_batch(torch.tensor([index % len(self)]))
        return images[0].cpu(), int(labels[0]), float(quality[0])


# render_images' batch for 32-pixel images, scaled with the pixel count like the chunks above:
# about 17 MiB of temporaries and 3 MiB of float output per batch at any image size.
RENDER_CHUNK = 256


def scaled_chunk(images_at_32: int, image_size: int) -> int:
    """Images whose render takes the bytes of `images_at_32` 32-pixel ones: max(1, n * (32 / size)^2).

    Exactly `images_at_32` at 32 pixels; 20 of 256 at 112 pixels, 1 at 512.
    """
    return max(1, images_at_32 * DEFAULT_IMAGE_SIZE**2 // image_size**2)


def render_chunk(image_size: int, device="cpu") -> int:
    """The most images `FaceWorld.render` renders at once on `device` at `image_size` pixels."""
    on_cpu = torch.device(device).type == "cpu"
    return scaled_chunk(_CPU_CHUNK if on_cpu else _DEVICE_CHUNK, image_size)


def render_images(world: FaceWorld, identities: torch.Tensor, image_indices: torch.Tensor,
                  batch_size: int | None = None,
                  progress: bool = False, device=None, keep_on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Render many images in batches (with a progress bar if asked): uint8 images on the CPU, or
    with `keep_on_device` on `device` (no copy to the host and back for a batch rendered on a GPU).

    `batch_size` defaults to `scaled_chunk(RENDER_CHUNK, world.image_size)` (256 at 32 pixels,
    fewer at larger sizes), so that one batch's float images and temporaries stay bounded.
    """
    from tqdm.auto import tqdm

    if batch_size is None:
        batch_size = scaled_chunk(RENDER_CHUNK, world.image_size)
    batch_size = as_int("batch_size", batch_size, 1)
    n = int(identities.numel())
    store = device if keep_on_device and device is not None else "cpu"
    images = torch.empty(n, 3, world.image_size, world.image_size, dtype=torch.uint8, device=store)
    quality = torch.empty(n, device=store)
    with tqdm(total=n, desc="rendering faces", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            out = world.render(identities[sl], image_indices[sl], device=device)
            images[sl] = (out.images * 255 + 0.5).to(torch.uint8).to(images.device)
            quality[sl] = out.quality.to(quality.device)
            bar.update(out.images.shape[0])
    return images, quality


#: The most images `bench` renders per run (about 10 minutes of CPU at 32 pixels).
MAX_BENCH_IMAGES = 10_000_000


def bench(num_images: int = 16384, image_size: int = DEFAULT_IMAGE_SIZE, device=None, repeats: int = 3,
          seed: int = 0) -> dict:
    """Batched rendering speed: the best of `repeats` timed runs after a warm-up.

    Each run renders `num_images` (at most `MAX_BENCH_IMAGES`) in `FaceWorld.render`'s own
    chunks (`render_chunk`), building each chunk's indices and dropping its images: memory
    stays at one chunk whatever `num_images` and `image_size` are.
    """
    import time

    num_images = as_int("num_images", num_images, 1, MAX_BENCH_IMAGES)
    repeats = as_int("repeats", repeats, 1)
    device = _check_device(device)
    world = FaceWorld(seed=seed, image_size=image_size)
    chunk = render_chunk(world.image_size, device)

    def render_range(start: int, stop: int) -> None:
        k = torch.arange(start, stop, device=device)
        world.render(k * 7919 % MAX_IDENTITIES, k % 50)

    def render_all() -> None:
        for start in range(0, num_images, chunk):
            render_range(start, min(start + chunk, num_images))

    render_range(0, min(chunk, num_images))  # warm-up: allocator, kernels
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        render_all()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return {"images_per_second": round(num_images / best, 1), "image_size": world.image_size,
            "num_images": num_images, "seconds": round(best, 4), "device": device.type,
            "threads": torch.get_num_threads(), "chunk": chunk}


# plot_preview ranks this many images of each identity (or images_per_identity, if more).
PREVIEW_POOL = 8
#: The most rows (identities) and columns (images per identity) of a preview grid.
MAX_PREVIEW = 100


def preview_selection(identities, images_per_identity: int, world: FaceWorld) -> tuple[torch.Tensor, torch.Tensor]:
    """The image indices [rows, cols] that `plot_preview` shows, and their qualities, best first.

    Each identity ranks its images 0..max(PREVIEW_POOL, cols)-1 by quality and keeps `cols` ranks
    spread evenly from the best to the worst. Quality does not depend on the image size, so
    neither does the selection, and a grid with fewer columns shows a subset of the larger one.
    """
    identities = torch.as_tensor(identities).reshape(-1)
    rows, cols = identities.numel(), as_int("images_per_identity", images_per_identity, 1, MAX_IMAGE_INDEX + 1)
    pool = max(PREVIEW_POOL, cols)
    quality = world.quality(identities.repeat_interleave(pool), torch.arange(pool).repeat(rows)).view(rows, pool)
    order = torch.argsort(quality, dim=1, descending=True, stable=True)
    ranks = torch.linspace(0, pool - 1, cols).round().long() if cols > 1 else torch.zeros(1, dtype=torch.long)
    chosen = order[:, ranks]
    return chosen, torch.gather(quality, 1, chosen)


def plot_preview(world: FaceWorld | None = None, identities=None, images_per_identity: int = 8, num_identities: int = 6,
                 ax=None, zoom: int = 1):
    """A grid: one row per identity, its images from best to worst quality, each titled with its index and quality.

    At most `MAX_PREVIEW` (100) rows (`num_identities`, or the `identities` given) and columns
    (`images_per_identity`): a preview, drawn one panel each.

    The same (seed, identities, images_per_identity) picks the same images at any `image_size`
    (see `preview_selection`): a 2 x 6 grid at 112x112 shows a subset of a 6 x 8 grid's faces at
    32x32, in the same order. Only the resolution differs: each face has the same pose, features,
    lighting, occlusion, blur and downscale (both scaled to the image), but edges are anti-aliased
    over a few pixels at any size (so softer at 32x32), and sensor noise is drawn per pixel (the
    same strength per pixel, a finer pattern at 112x112).
    """
    import matplotlib.pyplot as plt

    world = world or FaceWorld()
    cols = as_int("images_per_identity", images_per_identity, 1, MAX_PREVIEW)
    if identities is None:
        identities = torch.arange(as_int("num_identities", num_identities, 1, MAX_PREVIEW))
    identities = _check_ids(identities)
    if not 1 <= identities.numel() <= MAX_PREVIEW:
        raise ArgumentError("identities", f"must hold 1 to {MAX_PREVIEW} identities (one row of the grid each), "
                                          f"got {identities.numel():,}")
    rows = identities.numel()
    chosen, quality = preview_selection(identities, cols, world)
    out = world.render(identities.repeat_interleave(cols), chosen.reshape(-1))
    imgs = out.images.view(rows, cols, 3, world.image_size, world.image_size)
    if ax is None:
        fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols * zoom, 1.35 * rows * zoom + 0.5), squeeze=False)
    else:
        axes = ax
    for r in range(rows):
        for c in range(cols):
            a = axes[r][c]
            a.imshow(imgs[r, c].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            a.set_title(f"#{int(chosen[r, c])} q={float(quality[r, c]):.2f}", fontsize=7)
            if c == 0:
                a.set_ylabel(f"id {int(identities[r])}", fontsize=7)
    fig = axes[0][0].figure
    if not fig.get_suptitle():
        size = world.image_size
        fig.suptitle(f"FaceWorld(seed={world.seed}) at {size}x{size} px: images best to worst quality", fontsize=9)
        fig.supxlabel("#image index, q = ground-truth quality (1 = undegraded)", fontsize=7)
        fig.supylabel("identity", fontsize=7)
    return axes


def plot_quality_histogram(world: FaceWorld | None = None, num_identities: int = 10_000, images_per_identity: int = 10,
                           bins: int = 40, ax=None):
    """Histogram of ground-truth quality, with the curve that the severity's law predicts.

    The tall last bar is not a clamp: severity = max_severity * u ** 1.6 with u uniform, whose
    density grows without bound towards 0, so P(quality > 1 - t) = (t / max_severity) ** 0.625
    (about 10% of images in the top 2.5% of quality at max_severity 1, against 2.5% for a flat law).
    Only a quality within float rounding of 1 (severity below 2**-25: 0.002% of images) is exactly 1.0.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    world = world or FaceWorld()
    num_identities = _check_count("num_identities", num_identities)
    images_per_identity = as_int("images_per_identity", images_per_identity, 1, MAX_IMAGE_INDEX + 1)
    ids = torch.arange(num_identities).repeat_interleave(images_per_identity)
    quality = world.quality(ids, torch.arange(images_per_identity).repeat(num_identities)).double()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3))
    m = max(world.max_severity, 1e-12)
    edges = np.linspace(1.0 - m, 1.0, bins + 1)
    counts, _, _ = ax.hist(quality.numpy(), bins=edges, color="C0", label=f"{quality.numel():,} images")
    # Expected count in [a, b]: n * (P(q > a) - P(q > b)), with P(q > 1 - t) = (t / m) ** 0.625.
    tail = np.clip((1.0 - edges) / m, 0, 1) ** 0.625
    expected = quality.numel() * (tail[:-1] - tail[1:])
    centres = (edges[:-1] + edges[1:]) / 2
    ax.plot(centres, expected, "o-", color="C1", ms=3, label="expected: severity = u^1.6, u uniform")
    share = float((quality >= edges[-2]).double().mean())
    exact = float((quality == 1.0).double().mean())
    ax.annotate(f"{share:.1%} of images have q >= {edges[-2]:.3f}:\nseverity = u^1.6 piles up near 0\n(no clamp; {exact:.3%} exactly 1.0)",
                xy=(centres[-1], counts[-1]), xytext=(0.35, 0.6), textcoords="axes fraction", fontsize=7,
                arrowprops=dict(arrowstyle="->", color="0.3"))
    ax.set_title(f"Ground-truth quality of {quality.numel():,} images (seed {world.seed})", fontsize=9)
    ax.set_xlabel("quality = 1 - severity (1 = undegraded)")
    ax.set_ylabel("images per bin")
    ax.legend(fontsize=7, loc="upper left")
    return ax
