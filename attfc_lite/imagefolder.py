"""Real face datasets stored as one folder per identity (the layout ImageFolder reads) (lesson 00).

    root/<identity>/<image files>      e.g. aligned 112x112 face crops

Items are ``(image, label, quality)`` like the synthetic dataset's, with ``quality`` NaN
because real images carry no ground-truth quality. Unreadable files are never dropped
silently: they raise, or they are skipped with a warning and listed in ``skipped``.

Messy folders are handled as follows.

* Hidden folders (``.git``, ``.ipynb_checkpoints``, ...) are neither identities nor walked
  inside an identity. Images may sit in sub-folders of an identity folder.
* Symlinks are followed only inside ``root``, and each real file and folder is used once:
  real entries first, then links, each link adding only what the dataset does not already
  hold. A link is skipped, with one `LayoutWarning` and a ``(path, reason)`` entry in
  ``skipped_links``, when it is broken, points outside ``root``, loops (points to a folder
  holding the link, e.g. ``alice/loop -> ..``), points to a file or folder already in the
  dataset, or points into another identity's folder (which would give an image two labels).
  An identity folder that is a symlink follows the same rules.
* An image is checked against `MAX_IMAGE_PIXELS` from its header, before any pixel is
  decoded; a larger one is refused (`ImageTooLargeError`, or skipped under
  ``on_error='skip'``) rather than decoded at reduced size, so every kept image is
  decoded the same way.
* Names are compared after Unicode normalisation (NFC): two identity folders whose names
  differ only there (``'Jos\\u00e9'`` and ``'Jose\\u0301'`` both display as José) raise a
  ValueError, as they would be two labels for one person; two such file names within one
  identity are kept, warned about and listed in ``name_clashes``.
"""
from __future__ import annotations

import errno
import math
import operator
import os
import unicodedata
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from .checks import ArgumentError, as_bool, as_choice, as_int

__all__ = [
    "MAX_IMAGE_PIXELS",
    "CorruptImageError",
    "ImageTooLargeError",
    "SkippedImageWarning",
    "LayoutWarning",
    "ImageFolderFaces",
    "load_image",
]

# The most pixels one image may have (read at each call, so it can be changed). 50 MP covers
# phone photos (48 MP), while its float32 RGB tensor is already 600 MB; a face crop is far
# smaller. PIL's own Image.MAX_IMAGE_PIXELS only warns below twice its value, and users
# often switch it off, so it is not relied on.
MAX_IMAGE_PIXELS = 50_000_000

_ON_ERROR = ("skip", "raise")
_LAYOUT = "root/<identity>/<image files> (one folder per identity, e.g. aligned 112x112 face crops)"


class CorruptImageError(ValueError):
    """An image file that cannot be opened or decoded."""


class ImageTooLargeError(CorruptImageError):
    """An image file whose header declares more than `MAX_IMAGE_PIXELS` pixels."""


class SkippedImageWarning(UserWarning):
    """Unreadable image files were skipped (``on_error='skip'``)."""


class LayoutWarning(UserWarning):
    """Symlinks were skipped, or file names differ only by Unicode normalisation."""


def _corrupt_message(path: str, reason: str) -> str:
    return (
        f"cannot read image file {path!r}: {reason}. Fix or delete the file, or pass "
        f"on_error='skip' to drop unreadable files with a warning."
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_for(path: str, exc: BaseException) -> CorruptImageError:
    """The error raised under on_error='raise' for a file that failed with `exc`."""
    if isinstance(exc, ImageTooLargeError):  # already names the file, its size and the limit
        return ImageTooLargeError(f"{exc}, or pass on_error='skip' to drop such files with a warning.")
    return CorruptImageError(_corrupt_message(path, _reason(exc)))


def _decode_rgb(path: str | os.PathLike) -> Image.Image:
    """The file decoded to an RGB PIL image, refusing one over MAX_IMAGE_PIXELS before decoding."""
    with warnings.catch_warnings():
        # PIL warns about large images at open; the check below replaces that warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:  # PIL refuses twice its own limit at open
            raise ImageTooLargeError(
                f"image file {str(path)!r} is too large for PIL to open ({exc}), far over the limit of "
                f"{MAX_IMAGE_PIXELS:,} pixels (attfc_lite.imagefolder.MAX_IMAGE_PIXELS), so it was not decoded. "
                f"Downscale the file"
            ) from None
    with img:
        width, height = img.size  # from the header: open() decodes no pixel yet
        limit = MAX_IMAGE_PIXELS
        if width * height > limit:
            raise ImageTooLargeError(
                f"image file {str(path)!r} is {width}x{height} = {width * height:,} pixels, over the limit "
                f"of {limit:,} (attfc_lite.imagefolder.MAX_IMAGE_PIXELS), so it was not decoded. "
                f"Downscale the file, raise MAX_IMAGE_PIXELS if the image is genuine"
            )
        # convert() forces the full decode, so truncated files fail here and not later.
        if img.mode in _WIDE_GREY:
            return _scaled_grey(img).convert("RGB")
        return img.convert("RGB")


# PIL opens 16-bit greyscale PNG and TIFF files in these modes; its convert("RGB") clips their
# values at 255 (a 16-bit image becomes black and white), so they are scaled to 8 bits here.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _scaled_grey(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image ('I;16...' or 'I', values 0 to 65535) as 8-bit 'L', by scale, not clip."""
    import numpy as np

    wide = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def _check_image_size(image_size) -> int | None:
    if image_size is None:
        return None
    # A side over sqrt(MAX_IMAGE_PIXELS) would make every resized image larger than the limit.
    side = math.isqrt(MAX_IMAGE_PIXELS)
    try:
        return as_int("image_size", image_size, minimum=1, maximum=side)
    except ArgumentError as exc:
        raise ArgumentError("image_size", f"{str(exc).removeprefix('image_size ')}: the side in pixels, "
                                          f"or None to keep each file's size") from None


def load_image(path: str | os.PathLike, image_size: int | None = None) -> torch.Tensor:
    """Decode one file to a float RGB tensor [3, H, W] in [0, 1], resized to image_size if given.

    Raises ImageTooLargeError for a file over MAX_IMAGE_PIXELS, and PIL's errors for others.
    """
    image_size = _check_image_size(image_size)
    rgb = _decode_rgb(path)
    image = TF.to_dtype(TF.pil_to_tensor(rgb), torch.float32, scale=True)
    if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
        image = TF.resize(image, [image_size, image_size], antialias=True)
        # Bilinear weights are non-negative, but rounding can step a hair outside [0, 1].
        image = image.clamp_(0.0, 1.0)
    return image


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _dangling(link: str) -> str:
    """Why a link leads to nothing: a cycle of links, or a missing target."""
    try:
        os.stat(link)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "link cycle: following it leads back to a link already followed (too many levels of links)"
    return "broken link: its target does not exist"


def _inside(path: str, folder: str) -> bool:
    """Whether the real path `path` is `folder` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _entries(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda entry: entry.name)


class _Scan:
    """One walk of `root` under the rules of the module docstring.

    Paths are kept as walked (under `root`, as the user sees them); real paths, with every
    link resolved, are used only to decide what is inside, a loop or a duplicate.
    """

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.real_root = os.path.realpath(root)
        self.skipped_links: list[tuple[str, str]] = []
        self.folders: dict[str, str] = {}  # identity -> its real folder
        self._owner: dict[str, str] = {}  # real folder -> identity
        self._visited = {self.real_root}  # real folders walked or about to be
        self._find_identities()
        self.classes = sorted(self.folders)
        self._files: dict[str, str] = {}  # real file -> the path it is used under
        self._links: list[tuple[str, str, int]] = []  # (link, real folder holding it, label)
        self.found: list[list[str]] = [[] for _ in self.classes]
        for label, name in enumerate(self.classes):
            self._walk(os.path.join(self.root, name), label)
        # Links only after every real entry, so a link never claims a file before its real path.
        i = 0
        while i < len(self._links):  # a followed folder can queue more links
            self._follow(*self._links[i])
            i += 1

    def _skip(self, path: str, reason: str) -> None:
        self.skipped_links.append((path, reason))

    def _owner_of(self, real: str) -> str | None:
        """The identity whose folder holds the real path `real`, if any."""
        while real != self.real_root and _inside(real, self.real_root):
            if real in self._owner:
                return self._owner[real]
            real = os.path.dirname(real)
        return None

    def _folder_problem(self, target: str, holder: str, identity: str | None) -> str | None:
        """Why a link in the real folder `holder` to the real folder `target` is not followed."""
        if not _inside(target, self.real_root):
            return f"points outside root, to {target!r}"
        if _inside(holder, target):
            return f"loop: points to {target!r}, a folder that holds the link"
        other = self._owner_of(target)
        if other is not None and other != identity:
            where = "to" if target in self._owner else "into"
            return f"points {where} the folder of identity {other!r}"
        if target in self._visited:
            return f"points to {target!r}, a folder already in the dataset"
        return None

    def _find_identities(self) -> None:
        links = []
        for entry in _entries(self.root):
            if entry.name.startswith("."):  # .ipynb_checkpoints, .git, ...: not identities
                continue
            if entry.is_symlink():
                links.append(entry)
            elif entry.is_dir():
                self._accept(entry.name, os.path.join(self.real_root, entry.name))
        for entry in links:  # after the real folders, so an alias never displaces one
            target = os.path.realpath(entry.path)
            if not os.path.isdir(target):
                if not os.path.exists(target):
                    self._skip(entry.path, _dangling(entry.path))
                continue  # a file in root: not an identity, as before
            problem = self._folder_problem(target, self.real_root, None)
            if problem is None:
                self._accept(entry.name, target)
            else:
                self._skip(entry.path, problem)

    def _accept(self, identity: str, real: str) -> None:
        self.folders[identity] = real
        self._owner[real] = identity
        self._visited.add(real)

    def _walk(self, top: str, label: int) -> None:
        """Real files and folders under `top` (already in _visited); links are queued."""
        stack = [(top, os.path.realpath(top))]
        while stack:
            path, real = stack.pop()
            folders = []
            for entry in _entries(path):
                if entry.is_symlink():
                    self._links.append((entry.path, real, label))
                elif entry.is_dir():
                    if not entry.name.startswith("."):
                        folders.append((entry.path, os.path.join(real, entry.name)))
                elif _is_image_name(entry.name):
                    self._add(entry.path, os.path.join(real, entry.name), label)
            for sub, sub_real in reversed(folders):  # popped in sorted order
                if sub_real in self._visited:  # met again below a followed link
                    self._skip(sub, f"{sub_real!r} is a folder already in the dataset")
                    continue
                self._visited.add(sub_real)
                stack.append((sub, sub_real))

    def _add(self, path: str, real: str, label: int) -> None:
        if real in self._files:
            self._skip(path, f"same file as {self._files[real]!r}")
            return
        self._files[real] = path
        self.found[label].append(path)

    def _follow(self, link: str, holder: str, label: int) -> None:
        name = os.path.basename(link)
        identity = self.classes[label]
        target = os.path.realpath(link)
        if os.path.isdir(target):
            if name.startswith("."):
                return
            problem = self._folder_problem(target, holder, identity)
            if problem is None:
                self._visited.add(target)
                self._walk(link, label)
            else:
                self._skip(link, problem)
            return
        if not _is_image_name(name):  # like any other file that is not an image
            return
        other = self._owner_of(target)
        if not os.path.exists(target):
            self._skip(link, _dangling(link))
        elif not _inside(target, self.real_root):
            self._skip(link, f"points outside root, to {target!r}")
        elif other is not None and other != identity:
            self._skip(link, f"points into the folder of identity {other!r}")
        else:
            self._add(link, target, label)

    def identity_clashes(self) -> list[tuple[str, str]]:
        """Pairs of identity names equal after NFC normalisation."""
        seen: dict[str, str] = {}
        pairs = []
        for name in self.classes:
            key = unicodedata.normalize("NFC", name)
            if key in seen:
                pairs.append((seen[key], name))
            else:
                seen[key] = name
        return pairs

    def file_clashes(self) -> list[tuple[str, str]]:
        """Pairs of paths within one identity equal after NFC normalisation."""
        pairs = []
        for name, paths in zip(self.classes, self.found):
            top = os.path.join(self.root, name)
            seen: dict[str, str] = {}
            for path in paths:
                key = unicodedata.normalize("NFC", os.path.relpath(path, top))
                if key in seen:
                    pairs.append((seen[key], path))
                else:
                    seen[key] = path
        return pairs


def _check_root(root) -> Path:
    try:
        root = Path(os.fspath(root))
    except TypeError:
        raise ArgumentError("root", f"must be a folder path (str or pathlib.Path) laid out as {_LAYOUT}, "
                                    f"got {type(root).__name__} {root!r}") from None
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ArgumentError("root", f"must be a folder laid out as {_LAYOUT}; {str(root)!r} {what}")
    return root


class ImageFolderFaces(Dataset):
    """Face images in ``root/<identity>/<image files>``; item i is ``(image, label, nan)``.

    Args:
        root: the dataset folder; identities are its sub-folders, labelled in sorted order.
            Symlinks, oversized images and Unicode names are handled as the module says.
        image_size: resize every image to image_size x image_size, a whole number from 1 to
            sqrt(MAX_IMAGE_PIXELS) (None keeps the file's size; the files must then share one
            size, or ArgumentError names two that differ).
        on_error: "skip" (warn, record in ``skipped``, carry on) or "raise" (CorruptImageError).
        verify: decode every file once now, so bad files are found before training.
            With verify=False they are found in ``__getitem__``, which then returns the next
            readable item (index + 1, wrapping around) under "skip". Skips found inside
            DataLoader worker processes are warned there but not recorded in this object.
        progress: show a tqdm bar while verifying.

    Attributes besides ``classes``, ``samples`` and ``labels``: ``skipped`` (unreadable files),
    ``skipped_links`` (symlinked paths not used) and ``name_clashes`` (file-name pairs that
    differ only by Unicode normalisation), each a list of pairs.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        on_error: str = "skip",
        verify: bool = True,
        progress: bool = False,
    ) -> None:
        on_error = as_choice("on_error", on_error, _ON_ERROR)
        image_size = _check_image_size(image_size)
        verify = as_bool("verify", verify)
        progress = as_bool("progress", progress)
        root = _check_root(root)

        self.root = root
        self.image_size = image_size
        self.on_error = on_error
        scan = _Scan(root)
        if not scan.classes:
            raise ValueError(f"root={str(root)!r} has no identity folders; expected the layout {_LAYOUT}")
        clashes = scan.identity_clashes()
        if clashes:
            listing = "\n".join(f"  {a!r} = {ascii(a)} and {b!r} = {ascii(b)}" for a, b in clashes)
            raise ValueError(
                f"identity folders under root={str(root)!r} have names that differ only by Unicode "
                f"normalisation, so one person would get two labels:\n{listing}\nrename one folder of each "
                f"pair to the other's spelling (merging their images), e.g. to unicodedata.normalize('NFC', name)"
            )
        self.classes = scan.classes
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.skipped_links = scan.skipped_links
        self.name_clashes = scan.file_clashes()
        samples = [(path, label) for label, paths in enumerate(scan.found) for path in paths]
        self._warn_layout()
        if not samples:
            raise ValueError(
                f"root={str(root)!r} has identity folders but no image files with extensions "
                f"{', '.join(IMG_EXTENSIONS)}; expected the layout {_LAYOUT}"
            )
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()  # indices found unreadable in __getitem__ (verify=False)

        sizes: dict[tuple[int, int], str] = {}  # each image size met, with one file of it
        if verify:
            samples = self._verify(samples, progress, sizes)
        if image_size is None:
            self._check_one_size(samples, sizes)
        self.samples: list[tuple[str, int]] = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self._warn_empty_identities()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _warn_layout(self) -> None:
        if self.skipped_links:
            listing = "\n".join(f"  {p}: {r}" for p, r in self.skipped_links)
            warnings.warn(
                f"skipped {len(self.skipped_links)} symlinked path(s) under root={str(self.root)!r} "
                f"(listed in .skipped_links); links are followed only inside root, never around a loop "
                f"or into another identity's folder, and each real file or folder is used once:\n{listing}",
                LayoutWarning,
                stacklevel=3,
            )
        if self.name_clashes:
            listing = "\n".join(f"  {ascii(a)} and {ascii(b)}" for a, b in self.name_clashes)
            warnings.warn(
                f"{len(self.name_clashes)} pair(s) of file names within one identity under "
                f"root={str(self.root)!r} differ only by Unicode normalisation (listed in .name_clashes); "
                f"both files are kept, but they are likely one image stored twice: delete or rename one "
                f"of each pair:\n{listing}",
                LayoutWarning,
                stacklevel=3,
            )

    def _check_one_size(self, samples: list[tuple[str, int]], sizes: dict[tuple[int, int], str]) -> None:
        """Refuse files of different sizes when they are not resized: a batch of them cannot be stacked."""
        if not sizes:  # not verified: the sizes from the files' headers (no pixel is decoded)
            for path, _ in samples:
                try:
                    with Image.open(path) as img:
                        size = img.size
                except Exception:  # an unreadable file is for __getitem__ to report or skip
                    continue
                if size[0] * size[1] <= MAX_IMAGE_PIXELS:  # one too large is refused when read
                    sizes.setdefault(size, path)
                if len(sizes) > 1:
                    break
        if len(sizes) > 1:
            (a, path_a), (b, path_b) = list(sizes.items())[:2]
            raise ArgumentError("image_size", f"is None (keep each file's size), but the images under "
                                              f"root={str(self.root)!r} differ in size ({path_a!r} is "
                                              f"{a[0]}x{a[1]}, {path_b!r} is {b[0]}x{b[1]}), so a batch of them "
                                              f"cannot be stacked; pass image_size=<side> (e.g. "
                                              f"image_size={min(a[0], a[1], b[0], b[1])}) to resize every image")

    def _verify(self, samples: list[tuple[str, int]], progress: bool,
                sizes: dict[tuple[int, int], str]) -> list[tuple[str, int]]:
        kept: list[tuple[str, int]] = []
        bad: list[tuple[str, str]] = []
        for path, label in tqdm(samples, desc="verifying images", unit="img", disable=not progress):
            try:
                sizes.setdefault(_decode_rgb(path).size, path)
            except Exception as exc:  # PIL signals bad data with many exception types
                if self.on_error == "raise":
                    raise _error_for(path, exc) from exc
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
        rule = f"must be a whole number (an int) with -{n} <= index < {n}"
        # operator.index takes ints, numpy ints and integer tensors but not floats; a bool is
        # an int to Python, yet ds[True] is a mistake, not item 1.
        if isinstance(index, bool) or getattr(index, "dtype", None) is torch.bool:
            raise ArgumentError("index", f"{rule}, got {index!r}")
        try:
            index = operator.index(index)
        except TypeError:
            raise ArgumentError("index", f"{rule}, got {type(index).__name__} {index!r}") from None
        if not -n <= index < n:
            # IndexError, not ArgumentError: iterating over the dataset stops on it.
            raise IndexError(f"index={index} is out of range for a dataset of {n} images; use -{n} <= index < {n}")
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
                    raise _error_for(path, exc) from exc
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
