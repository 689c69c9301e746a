"""Plots of the face world for the lessons: a preview grid of faces best to worst quality
(`plot_preview`, `preview_selection`) and the histogram of ground-truth quality (lesson 00).
"""
from __future__ import annotations

import torch

from ..checks import ArgumentError, as_int
from .params import MAX_IMAGE_INDEX
from .world import FaceWorld, _check_count, _check_ids

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
