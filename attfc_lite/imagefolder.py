"""Real face datasets stored as one folder per identity (the layout ImageFolder reads).

    root/<identity>/<image files>      e.g. aligned 112x112 face crops

Items are ``(image, label, quality)`` like the synthetic dataset's, with ``quality`` NaN
because real images carry no ground-truth quality. Unreadable files are never dropped
silently: they raise, or they are skipped with a warning and listed in ``skipped``.
"""
from __future__ import annotations

import operator
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

__all__ = ["CorruptImageError", "SkippedImageWarning", "ImageFolderFaces", "load_image"]

_ON_ERROR = ("skip", "raise")
_LAYOUT = "root/<identity>/<image files> (one folder per identity, e.g. aligned 112x112 face crops)"


class CorruptImageError(ValueError):
    """An image file that cannot be opened or decoded."""


class SkippedImageWarning(UserWarning):
    """Unreadable image files were skipped (``on_error='skip'``)."""


def _corrupt_message(path: str, reason: str) -> str:
    return (
        f"cannot read image file {path!r}: {reason}. Fix or delete the file, or pass "
        f"on_error='skip' to drop unreadable files with a warning."
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_image(path: str | os.PathLike, image_size: int | None = None) -> torch.Tensor:
    """Decode one file to a float RGB tensor [3, H, W] in [0, 1], resized to image_size if given."""
    with Image.open(path) as img:
        # convert() forces the full decode, so truncated files fail here and not later.
        rgb = img.convert("RGB")
    image = TF.to_dtype(TF.pil_to_tensor(rgb), torch.float32, scale=True)
    if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
        image = TF.resize(image, [image_size, image_size], antialias=True)
        # Bilinear weights are non-negative, but rounding can step a hair outside [0, 1].
        image = image.clamp_(0.0, 1.0)
    return image


def _find_identities(root: Path) -> tuple[list[str], dict[str, int]]:
    try:
        classes, _ = find_classes(root)
    except FileNotFoundError:
        classes = []
    # Hidden folders (.ipynb_checkpoints, .git, ...) are not identities.
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:
        raise ValueError(f"root={str(root)!r} has no identity folders; expected the layout {_LAYOUT}")
    return classes, {c: i for i, c in enumerate(classes)}


class ImageFolderFaces(Dataset):
    """Face images in ``root/<identity>/<image files>``; item i is ``(image, label, nan)``.

    Args:
        root: the dataset folder; identities are its sub-folders, labelled in sorted order.
        image_size: resize every image to image_size x image_size (None keeps the file's size).
        on_error: "skip" (warn, record in ``skipped``, carry on) or "raise" (CorruptImageError).
        verify: decode every file once now, so bad files are found before training.
            With verify=False they are found in ``__getitem__``, which then returns the next
            readable item (index + 1, wrapping around) under "skip". Skips found inside
            DataLoader worker processes are warned there but not recorded in this object.
        progress: show a tqdm bar while verifying.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        on_error: str = "skip",
        verify: bool = True,
        progress: bool = False,
    ) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error={on_error!r} is not valid; use one of {list(_ON_ERROR)}")
        if image_size is not None:
            if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
                raise ValueError(f"image_size={image_size!r} must be a positive int (pixels per side) or None")
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root={str(root)!r} is not a directory; expected the layout {_LAYOUT}")

        self.root = root
        self.image_size = image_size
        self.on_error = on_error
        self.classes, self.class_to_idx = _find_identities(root)
        samples = make_dataset(root, self.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise ValueError(
                f"root={str(root)!r} has identity folders but no image files with extensions "
                f"{', '.join(IMG_EXTENSIONS)}; expected the layout {_LAYOUT}"
            )
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()  # indices found unreadable in __getitem__ (verify=False)

        if verify:
            samples = self._verify(samples, progress)
        self.samples: list[tuple[str, int]] = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self._warn_empty_identities()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _verify(self, samples: list[tuple[str, int]], progress: bool) -> list[tuple[str, int]]:
        kept: list[tuple[str, int]] = []
        bad: list[tuple[str, str]] = []
        for path, label in tqdm(samples, desc="verifying images", unit="img", disable=not progress):
            try:
                with Image.open(path) as img:
                    img.convert("RGB")
            except Exception as exc:  # PIL signals bad data with many exception types
                if self.on_error == "raise":
                    raise CorruptImageError(_corrupt_message(path, _reason(exc))) from exc
                bad.append((path, _reason(exc)))
                continue
            kept.append((path, label))
        if bad:
            self.skipped.extend(bad)
            listing = "\n".join(f"  {p}: {r}" for p, r in bad)
            warnings.warn(
                f"skipped {len(bad)} unreadable image file(s) under root={str(self.root)!r} "
                f"(listed in .skipped; pass on_error='raise' to stop instead):\n{listing}",
                SkippedImageWarning,
                stacklevel=3,
            )
        if not kept:
            raise ValueError(f"none of the {len(samples)} image files under root={str(self.root)!r} could be read")
        return kept

    def _warn_empty_identities(self) -> None:
        counts = self.images_per_identity()
        empty = [self.classes[c] for c in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            # They keep their label so folder names and labels stay aligned; say so.
            warnings.warn(
                f"{len(empty)} identity folder(s) under root={str(self.root)!r} have no readable image "
                f"and keep a label with no samples: {empty}",
                SkippedImageWarning,
                stacklevel=3,
            )

    def images_per_identity(self) -> torch.Tensor:
        """Number of images of each identity, LongTensor [num_classes]."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float]:
        n = len(self.samples)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"index={index} is out of range for a dataset of {n} images")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            path, label = self.samples[j]
            try:
                image = load_image(path, self.image_size)
            except Exception as exc:  # see _verify
                if self.on_error == "raise":
                    raise CorruptImageError(_corrupt_message(path, _reason(exc))) from exc
                self._bad.add(j)
                self.skipped.append((path, _reason(exc)))
                warnings.warn(
                    f"skipped unreadable image file {path!r} ({_reason(exc)}); returning the next "
                    f"readable item instead. Use verify=True to find bad files up front.",
                    SkippedImageWarning,
                    stacklevel=2,
                )
                continue
            return image, label, float("nan")
        raise CorruptImageError(f"none of the {n} image files under root={str(self.root)!r} could be read")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"num_classes={self.num_classes}, image_size={self.image_size}, skipped={len(self.skipped)})"
        )
