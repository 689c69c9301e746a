"""The LFW-style pair list: genuine and impostor pairs of image indices, drawn without
repeats, and the split of a pair list into low- and high-quality halves (lesson 01)."""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _check_labels(labels: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of identity ids, got {type(labels).__name__}; wrap it with torch.as_tensor")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (one identity id per image), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}; use labels.long()")
    labels = labels.detach().to("cpu", torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be identity ids >= 0, got min {int(labels.min())}; "
                         "map them to 0..n-1 (for example with torch.unique(labels, return_inverse=True))")
    return labels


def _unrank_pair(r: Tensor) -> tuple[Tensor, Tensor]:
    """Rank r -> (i, j), i < j, in the order (0,1), (0,2), (1,2), (0,3), ... : r = j(j-1)/2 + i."""
    j = torch.floor((1.0 + torch.sqrt(1.0 + 8.0 * r.double())) / 2.0).long()
    # float rounding can put j one off either way near perfect squares
    j = torch.where(j * (j - 1) // 2 > r, j - 1, j)
    j = torch.where((j + 1) * j // 2 <= r, j + 1, j)
    i = r - j * (j - 1) // 2
    return i, j


def _draw_unique(
    count: int,
    draw: Any,
    gen: torch.Generator,
    accept_rate: float = 1.0,
) -> list[tuple[int, int]]:
    """Rejection-sample `count` distinct pairs from a large pool; `draw(n, gen)` -> (a, b, ok)."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < count:
        need = count - len(out)
        n = min(int(math.ceil(need * 1.3 / max(accept_rate, 1e-6))) + 16, 10_000_000)
        a, b, ok = draw(n, gen)
        for x, y, good in zip(a.tolist(), b.tolist(), ok.tolist()):
            if not good:
                continue
            key = (x, y) if x < y else (y, x)
            if key in seen:
                continue
            seen.add(key)
            out.append(key)
            if len(out) == count:
                break
    return out


def make_pairs(labels: Tensor, num_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Draw verification pairs: `num_pairs // 2` genuine first, then the impostors.

    Genuine pairs are drawn uniformly from all pairs of two different images of one identity,
    impostor pairs uniformly from all pairs of images of two different identities. No pair
    (unordered) repeats unless more pairs are asked for than exist; then every existing pair
    is used once and the rest are drawn with repetition. Each pair has idx_a < idx_b.
    Deterministic given `seed` (a private torch.Generator; the global RNG is untouched).

    Returns (idx_a, idx_b, is_same): two LongTensors of image indices and a BoolTensor.
    """
    labels = _check_labels(labels)
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, (int, np.integer)) or num_pairs < 2:
        raise ValueError(f"num_pairs must be an int >= 2 (at least one genuine and one impostor pair), got {num_pairs!r}")
    num_pairs = int(num_pairs)
    n_gen = num_pairs // 2
    n_imp = num_pairs - n_gen

    uniq, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if uniq.numel() < 2:
        raise ValueError(
            f"labels hold {uniq.numel()} identity; impostor pairs need at least 2 identities: pass images of more identities"
        )
    pairs_per_id = counts * (counts - 1) // 2
    total_gen = int(pairs_per_id.sum())
    if total_gen == 0:
        raise ValueError("no identity in labels has 2 or more images, so no genuine pair exists; pass at least 2 images of some identities")
    n_img = labels.numel()
    total_imp = (n_img * n_img - int((counts * counts).sum())) // 2

    if n_gen > total_gen or n_imp > total_imp:
        warnings.warn(
            f"asked for {n_gen} genuine and {n_imp} impostor pairs but only {total_gen} and {total_imp} exist; "
            "some pairs repeat: ask for fewer pairs or pass more images",
            stacklevel=2,
        )
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(inverse, stable=True)  # image indices grouped by identity
    starts = torch.cumsum(counts, 0) - counts
    cum_pairs = torch.cumsum(pairs_per_id, 0)

    def genuine_from_ranks(ranks: Tensor) -> tuple[Tensor, Tensor]:
        ident = torch.searchsorted(cum_pairs, ranks, right=True)
        local = ranks - (cum_pairs[ident] - pairs_per_id[ident])
        i, j = _unrank_pair(local)
        a, b = order[starts[ident] + i], order[starts[ident] + j]
        return torch.minimum(a, b), torch.maximum(a, b)

    # Genuine pairs: sample ranks in [0, total_gen) and map them to image pairs.
    if n_gen >= total_gen // 2:  # small pool: a permutation is cheap and never rejects
        ranks = torch.randperm(total_gen, generator=gen)[:n_gen]
        if n_gen > total_gen:
            ranks = torch.cat([ranks, torch.randint(total_gen, (n_gen - total_gen,), generator=gen)])
        gen_a, gen_b = genuine_from_ranks(ranks)
    else:
        def draw_gen(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
            a, b = genuine_from_ranks(torch.randint(total_gen, (n,), generator=g))
            return a, b, torch.ones(n, dtype=torch.bool)

        picked = torch.tensor(_draw_unique(n_gen, draw_gen, gen), dtype=torch.int64)
        gen_a, gen_b = picked[:, 0], picked[:, 1]

    # Impostor pairs: enumerate when the pool is small, else draw two images and reject same-identity.
    if total_imp <= 4 * n_imp + 1000:
        groups = [order[s : s + c] for s, c in zip(starts.tolist(), counts.tolist())]
        parts_a, parts_b = [], []
        for p in range(len(groups)):
            for q in range(p + 1, len(groups)):
                ga, gb = torch.meshgrid(groups[p], groups[q], indexing="ij")
                parts_a.append(ga.reshape(-1))
                parts_b.append(gb.reshape(-1))
        all_a, all_b = torch.cat(parts_a), torch.cat(parts_b)
        pick = torch.randperm(total_imp, generator=gen)[:n_imp]
        if n_imp > total_imp:
            pick = torch.cat([pick, torch.randint(total_imp, (n_imp - total_imp,), generator=gen)])
        imp_a = torch.minimum(all_a[pick], all_b[pick])
        imp_b = torch.maximum(all_a[pick], all_b[pick])
    else:
        def draw_imp(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
            a = torch.randint(n_img, (n,), generator=g)
            b = torch.randint(n_img, (n,), generator=g)
            return a, b, inverse[a] != inverse[b]

        picked = torch.tensor(
            _draw_unique(n_imp, draw_imp, gen, accept_rate=2.0 * total_imp / (n_img * n_img)), dtype=torch.int64
        )
        imp_a, imp_b = picked[:, 0], picked[:, 1]

    idx_a = torch.cat([gen_a, imp_a])
    idx_b = torch.cat([gen_b, imp_b])
    is_same = torch.cat([torch.ones(n_gen, dtype=torch.bool), torch.zeros(n_imp, dtype=torch.bool)])
    return idx_a, idx_b, is_same


def _quality_split(pair_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low / high halves by pair quality: ranks below the median are 'low', the rest 'high'.

    A split by rank rather than by value keeps the halves equal in size when many pairs share
    the median quality; ties are broken by pair order (stable sort).
    """
    order = np.argsort(pair_q, kind="stable")
    low = np.zeros(pair_q.size, dtype=bool)
    low[order[: pair_q.size // 2]] = True
    return low, ~low
