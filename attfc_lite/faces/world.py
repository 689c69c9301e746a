"""The face world: `FaceWorld` (identity and image parameters, the train/eval splits of its
10,000,000 identities, and `render`, which runs the stages chunk by chunk) and the checks of the
ids, indices and devices that callers pass to it (lesson 00).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import ArgumentError, as_float, as_int
from .canvas import DEFAULT_IMAGE_SIZE, _Canvas, _colours, _pow
from .chunks import render_chunk
from .drawing import _FaceDrawing
from .params import _IDENTITY, _IMAGE, IDENTITY_PARAMS, IMAGE_PARAMS, MAX_IMAGE_INDEX, MAX_SEED, _draw
from .quality import _Degradations

MAX_IDENTITIES = 10_000_000


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


class FaceWorld(_FaceDrawing, _Degradations):
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
    from ..utils import default_device

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
