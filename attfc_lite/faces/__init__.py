"""The synthetic face world: millions of identities rendered on demand, with known quality (lessons 00, 09).

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

The package, by stage, each module importing only those above it: `params` (the hash and the
parameter tables), `canvas` (pixel grid, palette, drawing primitives), `chunks` (how many images
one render holds), `drawing` (the face and the photo's nuisance), `quality` (the degradations),
`world` (`FaceWorld`, its splits and argument checks), then `datasets` (`render_images`,
`SyntheticFaces`, `StreamedFaces`), `benchmark` (`bench`) and `plots`.
"""
from __future__ import annotations

from .benchmark import MAX_BENCH_IMAGES, bench
from .canvas import DEFAULT_IMAGE_SIZE, _Canvas
from .chunks import RENDER_CHUNK, render_chunk, scaled_chunk
from .datasets import StreamedFaces, SyntheticFaces, render_images
from .params import _IMAGE, IDENTITY_PARAMS, IMAGE_PARAMS, MAX_IMAGE_INDEX, MAX_SEED, _hash, _uniform
from .plots import MAX_PREVIEW, PREVIEW_POOL, plot_preview, plot_quality_histogram, preview_selection
from .quality import MAX_BLUR_SIGMA, MAX_DOWNSCALE, MAX_NOISE_STD, MAX_OCCLUSION
from .world import MAX_IDENTITIES, FaceWorld, RenderOutput, check_disjoint_splits

__all__ = [
    "DEFAULT_IMAGE_SIZE", "IDENTITY_PARAMS", "IMAGE_PARAMS", "MAX_BENCH_IMAGES", "MAX_BLUR_SIGMA", "MAX_DOWNSCALE",
    "MAX_IDENTITIES", "MAX_IMAGE_INDEX", "MAX_NOISE_STD", "MAX_OCCLUSION", "MAX_PREVIEW", "MAX_SEED", "PREVIEW_POOL",
    "RENDER_CHUNK", "FaceWorld", "RenderOutput", "StreamedFaces", "SyntheticFaces", "bench",
    "check_disjoint_splits", "plot_preview", "plot_quality_histogram", "preview_selection", "render_chunk",
    "render_images", "scaled_chunk", "_Canvas", "_IMAGE", "_hash", "_uniform",
]
