"""K-view identity sampling for AttFC (lessons 04, 09).

Each batch element is a query image of identity y plus K key images of the same identity,
drawn uniformly WITH replacement among y's images: a key may repeat or equal the query, and
an identity with one image gives K copies of it. Unlike the official sampler, the dataset
index is the query, so a shuffled epoch visits every image once.

With n images per identity, a query gets at least one key that is the query image itself with
probability 1 - (1 - 1/n)^K (`self_key_share`): 5/9 at n = 3, K = 2, and 1 at n = 1. Such a key
makes the positive easy (the GCC leans on the query's own image, seen through encoder_k), so
`exclude_query=True` draws the keys from the identity's *other* images when it has any.
"""
from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .checks import as_bool, as_int

__all__ = ["identity_index", "sample_keys", "sample_keys_tensor", "self_key_share", "KViewDataset"]

IdentityIndex = tuple[Tensor, Tensor, Tensor]


def _check_labels(labels: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of identity indices, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}; use labels.long()")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {int(labels.min())}")
    return labels.long()


def identity_index(labels: Tensor) -> IdentityIndex:
    """CSR-like index of the images of each identity.

    Returns ``(order, starts, counts)``: ``order`` lists image indices sorted by label (stable,
    so ascending within an identity); the images of identity c are
    ``order[starts[c] : starts[c] + counts[c]]``. ``starts`` and ``counts`` have length
    ``labels.max() + 1``; absent labels have count 0.
    """
    labels = _check_labels(labels)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def _check_k(k: int) -> int:
    return as_int("k", k, 1)  # the number of key images per query


def sample_keys(
    labels: Tensor,
    query_indices: Tensor | Sequence[int],
    k: int,
    generator: torch.Generator | None = None,
    index: IdentityIndex | None = None,
    exclude_query: bool = False,
) -> Tensor:
    """Dataset indices of k key images per query, LongTensor [B, k], on labels' device.

    Keys are drawn uniformly with replacement among the images of each query's identity; with
    ``exclude_query=True``, among its images other than the query (an identity with a single
    image still gives that image). The same generator state gives the same uniform draws either
    way. Pass ``index=identity_index(labels)`` to reuse the index across calls.
    """
    k = _check_k(k)
    labels = _check_labels(labels)
    q = torch.as_tensor(query_indices, device=labels.device)
    if q.numel() == 0:  # an empty list becomes a float tensor: no queries, no keys
        q = q.long()
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(f"query_indices must hold integers, got dtype {q.dtype}")
    q = q.long().reshape(-1)
    n = labels.numel()
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= n):
        raise ValueError(
            f"query_indices must lie in [0, {n - 1}] (dataset of {n} images), "
            f"got values from {int(q.min())} to {int(q.max())}"
        )
    if index is None:
        index = identity_index(labels)
    elif len(index) != 3 or index[0].numel() != n:
        raise ValueError("index must be identity_index(labels) for these labels; leave it None to build it")
    order, starts, counts = (t.to(labels.device) for t in index)

    y = labels[q]
    start, count = starts[y], counts[y]
    # randint cannot take a per-row upper bound, so scale a uniform [0, 1) draw by the count;
    # float64 keeps the bias negligible for any realistic images-per-identity count.
    device = generator.device if generator is not None else labels.device
    u = torch.rand((q.numel(), k), generator=generator, dtype=torch.float64, device=device).to(labels.device)
    if not exclude_query:
        offset = torch.minimum((u * count[:, None]).long(), count[:, None] - 1)
        return order[start[:, None] + offset]
    # Draw among the count - 1 other images, then step over the query's own position.
    others = (count - 1).clamp(min=1)[:, None]
    offset = torch.minimum((u * others).long(), others - 1)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=order.device)
    own = (rank[q] - start)[:, None]  # the query's position among its identity's images
    offset = torch.where((count[:, None] > 1) & (offset >= own), offset + 1, offset)
    return order[start[:, None] + offset]


def self_key_share(images_per_identity: int, k: int) -> float:
    """The share of queries that get at least one key equal to the query image when k keys are
    drawn with replacement among an identity's `images_per_identity` images: 1 - (1 - 1/n)^k."""
    n = as_int("images_per_identity", images_per_identity, 1)
    return 1.0 - (1.0 - 1.0 / n) ** _check_k(k)


def sample_keys_tensor(
    images: Tensor,
    labels: Tensor,
    query_indices: Tensor | Sequence[int],
    k: int,
    generator: torch.Generator | None = None,
    index: IdentityIndex | None = None,
) -> Tensor:
    """Key images [B, k, 3, H, W] for an in-memory image tensor [N, 3, H, W]."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W], got {shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images has {images.shape[0]} images but labels has {labels.shape[0]} entries; they must match"
        )
    keys = sample_keys(labels, query_indices, k, generator=generator, index=index)
    return images[keys.to(images.device)]


def _item_seed(seed: int, epoch: int, index: int) -> int:
    # A cryptographic hash rather than hash(): stable across processes and platforms.
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class KViewDataset(Dataset):
    """Wrap a dataset of ``(image, label, quality)`` items into K-view items.

    Item i is ``(query_image, label, key_images [k, 3, H, W], quality, key_qualities [k])``,
    where the query is base item i and the keys are k images of its identity (other than the
    query itself with ``exclude_query=True``, when it has others). The keys depend
    only on (seed, epoch, i), so workers and reruns agree; call ``set_epoch`` before each epoch
    to draw new keys (before the DataLoader iterator is created when workers are persistent).

    The base dataset must have a ``labels`` LongTensor attribute, one label per item.
    """

    def __init__(self, base: Dataset, k: int = 2, seed: int = 0, exclude_query: bool = False) -> None:
        self.k = _check_k(k)
        self.exclude_query = as_bool("exclude_query", exclude_query)
        labels = getattr(base, "labels", None)
        if not isinstance(labels, Tensor):
            raise TypeError(
                f"base must have a `labels` tensor attribute (one label per item); "
                f"{type(base).__name__} has {type(labels).__name__}"
            )
        if labels.dim() != 1 or labels.numel() != len(base):
            raise ValueError(
                f"base.labels must be 1-D with one entry per item ({len(base)}), got shape {tuple(labels.shape)}"
            )
        seed = as_int("seed", seed)
        self.base = base
        self.labels = _check_labels(labels).cpu()
        self.seed = seed
        self.epoch = 0
        self.index = identity_index(self.labels)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.base, "num_classes", int(self.labels.max()) + 1))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose key draws ``__getitem__`` returns."""
        self.epoch = as_int("epoch", epoch, 0)

    def key_indices(self, index: int) -> Tensor:
        """Dataset indices of the k keys of item ``index`` in the current epoch, LongTensor [k]."""
        g = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, index))
        return sample_keys(self.labels, torch.tensor([index]), self.k, generator=g, index=self.index,
                           exclude_query=self.exclude_query)[0]

    def _load(self, index: int, expected_label: int) -> tuple[Tensor, float]:
        item = self.base[index]
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(
                f"base items must be (image, label, quality) triples; item {index} is {type(item).__name__}"
            )
        image, label, quality = item
        if int(label) != expected_label:
            # e.g. an ImageFolderFaces with verify=False substituting the next image for a bad one.
            raise ValueError(
                f"base[{index}] returned label {int(label)} but base.labels[{index}] is {expected_label}; "
                f"the base dataset substituted another item (for ImageFolderFaces, use verify=True)"
            )
        return image, float(quality)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor, float, Tensor]:
        n = len(self)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"index={index} is out of range for a dataset of {n} items")
        index %= n
        label = int(self.labels[index])
        query, quality = self._load(index, label)
        loaded = [self._load(j, label) for j in self.key_indices(index).tolist()]
        keys = torch.stack([img for img, _ in loaded])
        key_qualities = torch.tensor([qual for _, qual in loaded], dtype=torch.float32)
        return query, label, keys, quality, key_qualities

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base).__name__}, items={len(self)}, k={self.k}, seed={self.seed})"


def plot_key_views(images: Tensor, labels: Tensor, quality: Tensor | None, query_indices: Sequence[int], k: int,
                   generator: torch.Generator | None = None, ax=None):
    """One row per query: the query image, then its k key images (same identity, drawn with replacement)."""
    import matplotlib.pyplot as plt

    query_indices = torch.as_tensor(list(query_indices))
    keys = sample_keys(labels, query_indices, k, generator=generator)
    rows, cols = len(query_indices), k + 1
    if ax is None:
        _, ax = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for r, (q, row_keys) in enumerate(zip(query_indices.tolist(), keys.tolist())):
        for c, idx in enumerate([q] + row_keys):
            a = ax[r][c]
            img = images[idx]
            img = img.float() / 255 if img.dtype == torch.uint8 else img
            a.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            title = ("query" if c == 0 else f"key {c}") + (" (= query)" if c and idx == q else "")
            if quality is not None:
                title += f"\nq={float(quality[idx]):.2f}"
            a.set_title(title, fontsize=7)
        ax[r][0].set_ylabel(f"identity {int(labels[q])}", fontsize=7)
    return ax
