"""Datasets of the face world: `render_images` (many images to uint8, in bounded batches),
`SyntheticFaces` (a split rendered once into memory) and `StreamedFaces` (rendered per batch) (lessons 00, 09).
"""
from __future__ import annotations

import torch

from ..checks import ArgumentError, as_int
from .canvas import DEFAULT_IMAGE_SIZE
from .chunks import RENDER_CHUNK, scaled_chunk
from .params import MAX_IMAGE_INDEX
from .world import FaceWorld, _check_count


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
