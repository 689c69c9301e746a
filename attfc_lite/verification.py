"""Face verification on identities never seen in training: the LFW protocol.

A verification test is a list of image pairs, each either genuine (same identity) or
impostor (different identities). A model embeds every image, a pair is scored by the cosine
similarity of its two embeddings, and the scores are judged three ways:

- 10-fold accuracy (`kfold_accuracy`): the threshold is chosen on nine folds and the
  accuracy measured on the tenth, so the threshold never sees the pairs it is judged on.
- TAR at a fixed FAR (`tar_at_far`): the fraction of genuine pairs accepted when the
  threshold lets through a given fraction of impostors, read off the ROC curve.
- The ROC curve and its area (`roc_curve`, `plot_roc`).

A low FAR needs many impostor pairs: at FAR 1e-4, a list of 10,000 impostors decides the TAR
by a single pair. `all_pairs_verification` therefore computes the ROC, AUC and TAR@FAR from
every pair of the evaluation set (all genuine and all impostor pairs), in row chunks of the
similarity matrix so that memory stays bounded, while the 10-fold accuracy keeps the LFW
protocol's sampled pair list. `evaluate_verification` runs all of it on a model and a set of
labelled images and returns a JSON-serialisable dict; `verification_summary` prints it in a
few lines, with the number of pairs behind each figure.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import ArgumentError, as_int
from .utils import default_device

__all__ = [
    "plot_quality_split",
    "make_pairs",
    "embed",
    "roc_curve",
    "kfold_accuracy",
    "tar_at_far",
    "tar_at_far_report",
    "all_pairs_verification",
    "FAR_CONVENTION",
    "evaluate_verification",
    "verification_summary",
    "over_seeds",
    "ALL_PAIRS_PROTOCOL",
    "plot_roc",
]

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
_FOLDS = 10
# Distances to a target FAR closer than this count as equal, so that a target exactly between
# two ROC points is a tie despite rounding in k / num_impostor.
_TIE_TOL = 1e-12


# --------------------------------------------------------------------------- pairs


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


# --------------------------------------------------------------------------- embeddings


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def embed(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    flip: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Tensor:
    """L2-normalised embeddings [N, D] (CPU float32) of images [N, 3, H, W] in [0, 1].

    With `flip`, each embedding is model(image) + model(mirrored image) before normalising,
    the usual test-time protocol. The model runs in eval mode under no_grad; every submodule's
    train/eval flag is restored afterwards. `device` is where the batches go (default: the
    model's device); the model itself is not moved.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}; add a batch dim with images[None] for one image")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0); pass at least one image")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}; use images.float() / 255")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = _model_device(model) if device is None else default_device(device)

    modes = [(m, m.training) for m in model.modules()]
    starts = range(0, images.shape[0], int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch")
    out = []
    model.eval()
    try:
        with torch.no_grad():
            for s in starts:
                x = images[s : s + batch_size].to(dev)
                e = model(x)
                if not isinstance(e, Tensor) or e.dim() != 2 or e.shape[0] != x.shape[0]:
                    got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                    raise ValueError(f"model must return embeddings of shape [batch, embedding_dim], got {got}")
                if flip:
                    e = e + model(torch.flip(x, dims=[3]))
                out.append(F.normalize(e.float(), dim=1).cpu())
    finally:
        for m, was_training in modes:
            m.training = was_training
    return torch.cat(out)


# --------------------------------------------------------------------------- scores


def _as_scores(scores: Any, is_same: Any) -> tuple[np.ndarray, np.ndarray]:
    s = scores.detach().cpu().double().numpy() if isinstance(scores, Tensor) else np.asarray(scores, dtype=np.float64)
    y = is_same.detach().cpu().numpy() if isinstance(is_same, Tensor) else np.asarray(is_same)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one score per pair), got shape {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"is_same must be 1-D with one entry per score ({s.shape[0]}), got shape {y.shape}")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all():
            raise TypeError(f"is_same must be bool (or 0/1 integers), got dtype {y.dtype}")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf; check the embeddings (a zero embedding normalises to NaN)")
    return s, y


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # last position of each run of equal scores: one ROC point per distinct threshold
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def roc_curve(scores: Tensor, is_same: Tensor) -> dict:
    """ROC of "same when score >= threshold", one point per distinct score.

    Returns numpy arrays 'fpr', 'tpr', 'thresholds' (descending; the first is +inf, the point
    (0, 0) that accepts nothing) and 'auc' (trapezoidal area, so tied genuine/impostor scores
    count one half, as in the Mann-Whitney statistic).
    """
    s, y = _as_scores(scores, is_same)
    if y.all() or not y.any():
        raise ValueError("is_same needs both genuine (True) and impostor (False) pairs to draw a ROC curve")
    fpr, tpr, thresholds = _roc_points(s, y)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auc": auc}


def _best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising the accuracy of "same when score > t" on (s, y); lowest on ties.

    Candidates: one between each two consecutive distinct scores (their midpoint, or the lower
    score where the midpoint of two adjacent floats rounds onto the upper one), one below them
    all (all "same") and one above them all (all "different"); every achievable accuracy is
    reached by one of them.
    """
    u = np.unique(s)
    mid = u[:-1] + (u[1:] - u[:-1]) / 2.0
    between = np.where((mid >= u[:-1]) & (mid < u[1:]), mid, u[:-1])  # always u[k] <= t < u[k+1]
    below = u[0] - 1.0 if u[0] - 1.0 < u[0] else np.nextafter(u[0], -np.inf)
    cand = np.r_[below, between, u[-1] + 1.0]  # u[-1] + 1 may equal u[-1]: still all 'different'
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, cand, side="right")
    tn = np.searchsorted(neg, cand, side="right")
    return float(cand[int(np.argmax(tp + tn))])  # argmax returns the first, i.e. lowest, best


def _fold_of(y: np.ndarray, folds: int) -> np.ndarray:
    """Fold of each pair, stratified: the r-th genuine pair (in the given order) goes to fold
    r % folds, the r-th impostor pair to fold (num_genuine + r) % folds.

    Whatever the order, every fold gets num_genuine / folds genuine pairs, num_impostor / folds
    impostor pairs and num_pairs / folds pairs in all (each rounded up or down). For pairs given
    genuine first (as `make_pairs` gives them) this is fold i % folds for pair i, the plain
    interleaving, so the course's figures stay the same.
    """
    n_gen = int(y.sum())
    rank = np.empty(y.size, dtype=np.int64)
    rank[y] = np.arange(n_gen)
    rank[~y] = n_gen + np.arange(y.size - n_gen)
    return rank % folds


def kfold_accuracy(scores: Tensor, is_same: Tensor, folds: int = _FOLDS) -> dict:
    """Accuracy under the LFW protocol: threshold chosen on the other folds, scored on the held-out one.

    Folds are stratified (`_fold_of`): genuine pairs are dealt round the folds in their given
    order, then impostor pairs, continuing from the fold where the genuine ones stopped, so
    every fold holds both kinds in the same proportions whatever the order of the pairs (no
    shuffle: the result depends only on the order within each kind). Pairs given genuine
    first, as by `make_pairs`, land in fold i % folds. A pair is predicted "same" when score >
    threshold; the threshold is the candidate (midpoints of distinct training scores, or one
    below / above them all) with the best training accuracy, the lowest one on ties.
    'accuracy_std' is the population std (ddof = 0) over folds. Needs at least `folds`
    genuine and `folds` impostor pairs.
    """
    s, y = _as_scores(scores, is_same)
    folds = as_int("folds", folds, 2)
    n_gen = int(y.sum())
    n_imp = int(y.size) - n_gen
    if min(n_gen, n_imp) < folds:
        raise ArgumentError(
            "is_same", f"holds {n_gen} genuine (True) and {n_imp} impostor (False) pairs, but each of the "
                       f"folds={folds} folds needs at least one of each: pass at least {folds} pairs of each kind, "
                       f"or fewer folds")
    fold_of = _fold_of(y, folds)
    accs, thrs = [], []
    for k in range(folds):
        test = fold_of == k
        t = _best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] > t) == y[test])))
        thrs.append(t)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs,
        "thresholds": thrs,
    }


def _far_key(far: float) -> str:
    """'1e-3', '1.4e-3', '1.5e-3': the shortest mantissa that gives back `far` exactly."""
    for digits in range(17):
        text = f"{far:.{digits}e}"
        if float(text) == far:
            break
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def _check_fars(fars: Sequence[float]) -> list[float]:
    if isinstance(fars, (int, float)):
        fars = (fars,)
    out = []
    for far in fars:
        if isinstance(far, bool) or not isinstance(far, (int, float, np.floating)) or not 0.0 < float(far) <= 1.0:
            raise ValueError(f"each FAR in fars must be a number in (0, 1], got {far!r}")
        out.append(float(far))
    if len(set(out)) != len(out):
        raise ValueError(f"fars holds the same FAR twice: {fars!r}; pass each target once")
    return out


FAR_RULES = ("at_most", "nearest")


def _impostors_needed(far: float) -> int:
    """The fewest impostor pairs that can measure a FAR: 1 / far (1 / 1e-3 may round to 1000.0000000000001)."""
    return math.ceil(1.0 / far - 1e-9)


def tar_at_far_report(scores: Tensor, is_same: Tensor, fars: Sequence[float] = DEFAULT_FARS,
                      rule: str = "at_most") -> dict:
    """Per FAR key ("1e-2", "1.4e-3", ...): the TAR there and the FAR actually achieved.

    Each entry: {'tar', 'far_achieved', 'impostors_accepted', 'threshold', 'above_target',
    'note'}. Two conventions for the operating point:

    - rule='at_most' (default, the conservative one): the highest TAR among ROC points whose
      FPR is at most the target, so 'far_achieved' <= target always;
    - rule='nearest': the ROC point whose FPR is nearest to the target (lower FPR on a tie in
      distance, highest TPR among equal FPRs); it can sit above the target, and then
      'above_target' is True and 'note' says so.

    'threshold' uses "same when score >= threshold" (+inf: accept nothing). With fewer than
    1 / far impostor pairs the FAR cannot be estimated: the numbers are None and 'note' says why.
    """
    far_list = _check_fars(fars)
    if rule not in FAR_RULES:
        raise ValueError(f"rule must be one of {FAR_RULES}, got {rule!r}")
    s, y = _as_scores(scores, is_same)
    n_neg = int((~y).sum())
    if n_neg == 0 or y.sum() == 0:
        raise ValueError("is_same needs both genuine (True) and impostor (False) pairs to estimate TAR at FAR")
    fpr, tpr, thresholds = _roc_points(s, y)
    report = {}
    for far in far_list:
        key = _far_key(far)
        needed = _impostors_needed(far)
        if n_neg < needed:
            report[key] = {
                "tar": None, "far_achieved": None, "impostors_accepted": None, "threshold": None,
                "above_target": None, "note": f"too few impostor pairs: {n_neg} < {needed} needed for FAR {key}",
            }
            continue
        if rule == "at_most":
            # fpr and tpr never decrease along the curve: the last point within the target is the best
            i = int(np.nonzero(fpr <= far + _TIE_TOL)[0][-1])
        else:
            dist = np.abs(fpr - far)
            near = np.nonzero(dist <= dist.min() + _TIE_TOL)[0]
            near = near[fpr[near] == fpr[near].min()]
            i = int(near[np.argmax(tpr[near])])
        above = bool(fpr[i] > far + _TIE_TOL)
        report[key] = {
            "tar": float(tpr[i]),
            "far_achieved": float(fpr[i]),
            "impostors_accepted": int(round(fpr[i] * n_neg)),
            "threshold": float(thresholds[i]),
            "above_target": above,
            "note": f"the nearest ROC point is above the target: FAR {fpr[i]:.3g} > {key}" if above else None,
        }
    return report


def tar_at_far(scores: Tensor, is_same: Tensor, fars: Sequence[float] = DEFAULT_FARS, rule: str = "at_most") -> dict:
    """{"1e-2": TAR, ...}, None where too few impostors; see `tar_at_far_report` for the rule."""
    return {k: v["tar"] for k, v in tar_at_far_report(scores, is_same, fars, rule).items()}


# --------------------------------------------------------------------------- all pairs

# Scores are computed in tiles of this many rows of the similarity matrix. The tile grid is
# fixed, so every score comes out of a matrix product of the same shape whatever chunk_rows is,
# and the results do not depend on chunk_rows down to the last bit (BLAS rounding depends on
# the shapes it is given).
_TILE = 64
# Automatic chunk: about this many similarity-matrix entries held at once (8 MiB of float32).
_CHUNK_ELEMENTS = 1 << 20
# Scores in [-1, 1] are also counted in this many equal-width buckets: the bucket counts give
# exact ROC points above the low-FAR end, and let the AUC skip the exact comparison for every
# impostor score whose bucket holds no genuine score.
_BUCKETS = 1 << 20
_ROC_LOG_POINTS = 240
_ROC_LINEAR_POINTS = 100

FAR_CONVENTION = (
    "TAR@FAR over all pairs: for a target FAR, k = the largest number of impostor pairs with "
    "k / n_impostor <= FAR; the threshold t is the (k+1)-th highest impostor score and a pair is "
    "accepted when its score > t, so at most k impostor pairs are accepted (ties at t are all "
    "rejected) and far_achieved = accepted / n_impostor <= FAR. The other common convention "
    "interpolates the ROC curve linearly at exactly FAR; it can read a slightly higher TAR."
)


def _sorted_embeddings(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """Check the inputs; L2-normalised rows sorted by identity, each row's identity end, G, I."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor [N, D], got {type(embeddings).__name__}; "
                        "wrap it with torch.as_tensor")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D [N, D] (one row per image), got shape {tuple(embeddings.shape)}; "
                         "flatten each image's embedding with embeddings.reshape(N, -1)")
    if not embeddings.dtype.is_floating_point:
        raise TypeError(f"embeddings must be a float tensor, got dtype {embeddings.dtype}; use embeddings.float()")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of identity ids, got {type(labels).__name__}; "
                        "wrap it with torch.as_tensor")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must be 1-D with one identity id per row of embeddings ({embeddings.shape[0]}), "
                         f"got shape {tuple(labels.shape)}; pass the labels in the same order as the embeddings")
    labels = _check_labels(labels)
    emb = embeddings.detach().to("cpu")
    if emb.dtype not in (torch.float32, torch.float64):
        emb = emb.float()
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings contain NaN or inf; check the model's output")
    zero = torch.nonzero(~emb.ne(0).any(dim=1)).flatten()
    if zero.numel():
        raise ValueError(f"embeddings row {int(zero[0])} is all zeros, so its cosine similarity is undefined; "
                         "drop that image or check the model")
    _, counts = torch.unique(labels, return_counts=True)
    if counts.numel() < 2:
        raise ValueError(f"labels hold {counts.numel()} identity; impostor pairs need at least 2 identities: "
                         "pass images of more identities")
    n_gen = int((counts * (counts - 1) // 2).sum())
    if n_gen == 0:
        raise ValueError("no identity in labels has 2 or more images, so no genuine pair exists; "
                         "pass at least 2 images of some identities")
    n = labels.numel()
    n_imp = (n * n - int((counts * counts).sum())) // 2
    order = torch.argsort(labels, stable=True)
    emb = F.normalize(emb[order], dim=1)
    _, run = torch.unique_consecutive(labels[order], return_counts=True)
    id_end = torch.repeat_interleave(torch.cumsum(run, 0), run)  # one past the row's last same-identity row
    return emb, id_end, n_gen, n_imp


def _bucket(s: Tensor) -> Tensor:
    """Bucket index in [0, _BUCKETS) of each score; a non-decreasing function of the score."""
    x = s + 1.0
    x.mul_(_BUCKETS // 2)  # exact: a power of two
    return x.long().clamp_(0, _BUCKETS - 1)  # truncation equals floor wherever the clamp keeps it


def _genuine_scores(emb: Tensor, id_end: Tensor) -> Tensor:
    """Every genuine pair's score (rows sorted by identity), ascending.

    Identities of equal size c are scored together, a fixed number at a time (one batched
    product of c x c blocks); an identity too big for one block is scored in row tiles.
    """
    out = []
    ends = torch.unique_consecutive(id_end)
    first = torch.cat([ends.new_zeros(1), ends[:-1]])
    sizes = ends - first
    for c in torch.unique(sizes).tolist():
        if c < 2:
            continue
        group = first[sizes == c]
        if c * c <= _CHUNK_ELEMENTS:
            upper = torch.triu(torch.ones(c, c, dtype=torch.bool), diagonal=1)
            per = max(1, _CHUNK_ELEMENTS // (c * max(c, emb.shape[1])))  # bounds the gathered block too
            for g0 in range(0, group.numel(), per):
                block = emb[group[g0 : g0 + per, None] + torch.arange(c)]  # [ids, c, D]
                out.append(torch.bmm(block, block.transpose(1, 2))[:, upper].reshape(-1))
        else:
            for s0 in group.tolist():
                for r0 in range(s0, s0 + c, _TILE):
                    r1 = min(r0 + _TILE, s0 + c)
                    keep = torch.arange(r0, s0 + c)[None, :] > torch.arange(r0, r1)[:, None]
                    out.append((emb[r0:r1] @ emb[r0 : s0 + c].T)[keep])
    return torch.sort(torch.cat(out)).values


def _impostor_scores(emb: Tensor, id_end: Tensor, c0: int, c1: int) -> Tensor:
    """Scores of the impostor pairs (i, j), i < j, with row i in [c0, c1) (a multiple of _TILE apart)."""
    n = emb.shape[0]
    out = []
    for r0 in range(c0, c1, _TILE):
        r1 = min(r0 + _TILE, n)
        # rows are sorted by identity: every column from the row's identity end on is an impostor
        keep = torch.arange(r0, n)[None, :] >= id_end[r0:r1, None]
        out.append((emb[r0:r1] @ emb[r0:].T)[keep])
    return torch.cat(out)


def _thin_roc(families: list[tuple[np.ndarray, np.ndarray]], n_imp: int, n_gen: int,
              forced: np.ndarray) -> tuple[list, list]:
    """A few hundred exact ROC points: for each FPR of a log grid from 1 / n_imp to 1, of a
    linear grid on [0, 1] and of `forced` (impostor counts), the point with the highest TPR
    among those accepting at most that many impostor pairs.

    Each family is (fp, tp) counts of exact ROC points, both non-decreasing along the array.
    """
    grid = np.r_[np.logspace(np.log10(1.0 / n_imp), 0.0, _ROC_LOG_POINTS), np.linspace(0.0, 1.0, _ROC_LINEAR_POINTS)]
    targets = np.unique(np.r_[np.floor(grid * n_imp + 1e-9).astype(np.int64), forced, 0, n_imp])

    def pick(fp: np.ndarray, tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(fp, targets, side="right") - 1  # last point with fp <= target
        idx = np.unique(idx[idx >= 0])
        return fp[idx], tp[idx]

    picked = [pick(np.asarray(fp, dtype=np.int64), np.asarray(tp, dtype=np.int64)) for fp, tp in families]
    fp = np.concatenate([p[0] for p in picked])
    tp = np.concatenate([p[1] for p in picked])
    order = np.lexsort((tp, fp))
    fp, tp = pick(fp[order], tp[order])
    return [float(v) / n_imp for v in fp], [float(v) / n_gen for v in tp]


def all_pairs_verification(embeddings: Tensor, labels: Tensor, fars: Sequence[float] = DEFAULT_FARS,
                           chunk_rows: int | None = None) -> dict:
    """ROC, AUC and TAR@FAR over every pair of an evaluation set, in bounded memory.

    Every genuine pair (two different images of one identity) and every impostor pair (images
    of two different identities) is scored by the cosine similarity of its embeddings (the
    upper triangle of the similarity matrix; no image is paired with itself). The impostor
    scores are computed `chunk_rows` rows of the matrix at a time (rounded up to a multiple of
    64; default: about 2 M entries per chunk) and never stored all at once. What is kept: the
    genuine scores (4 bytes each), the highest impostor scores, about max(fars) x n_impostor of
    them (what the largest FAR needs), and a count of the impostor scores in 2^20 buckets.
    The results do not depend on `chunk_rows`.

    TAR@FAR is exact. Convention (also in the result's 'far_convention'): for a target FAR, k is
    the largest count with k / n_impostor <= FAR; the threshold t is the (k+1)-th highest
    impostor score and a pair is accepted when score > t. So at most k impostor pairs are
    accepted (ties at t are all rejected), 'far_achieved' = accepted / n_impostor <= FAR, and
    this is `tar_at_far_report`'s 'at_most' rule on the list of all pairs. The other common
    convention interpolates the ROC linearly at exactly FAR and can read a slightly higher TAR.
    With fewer than 1 / FAR impostor pairs the TAR is None and 'notes' says why.

    The AUC is exact: the probability that a genuine pair outscores an impostor pair, ties
    counting one half (the trapezoidal area under the full ROC), from exact integer counts.

    Returns a JSON-serialisable dict: 'num_genuine', 'num_impostor' (all pairs), 'auc',
    per FAR key ("1e-2", ...): 'tar_at_far', 'far_achieved', 'impostors_accepted',
    'genuine_accepted', 'thresholds' (t above; None with the TAR, or for FAR 1, which accepts
    every pair), 'notes' (only FARs with a note); 'roc' ({'fpr', 'tpr'}: at most about 350
    exact ROC points, thinned on a log grid of FPR from 1 / n_impostor to 1 and a linear grid,
    including each TAR@FAR operating point; plotted with straight lines between them), and
    'far_convention'.
    """
    far_list = _check_fars(fars)
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))
                                   or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int (rows of the similarity matrix per chunk) or None "
                         f"for automatic, got {chunk_rows!r}")
    emb, id_end, n_gen, n_imp = _sorted_embeddings(embeddings, labels)
    n = emb.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // n) if chunk_rows is None else int(chunk_rows)
    rows = -(-rows // _TILE) * _TILE

    gen = _genuine_scores(emb, id_end)  # ascending
    gen_bucket = _bucket(gen)
    # gen_start[b]: genuine scores in buckets below b (all of them below any score in bucket b)
    gen_start = torch.searchsorted(gen_bucket, torch.arange(_BUCKETS + 1))
    shared = gen_start[1:] > gen_start[:-1]  # buckets that hold a genuine score

    # k per FAR: the most impostor pairs a threshold may accept (same test as tar_at_far_report)
    ks: dict[str, int | None] = {}
    for far in far_list:
        if n_imp < _impostors_needed(far):
            ks[_far_key(far)] = None
            continue
        k = min(n_imp, int(math.floor(far * n_imp)))
        while k < n_imp and (k + 1) / n_imp <= far + _TIE_TOL:
            k += 1
        while k > 0 and k / n_imp > far + _TIE_TOL:
            k -= 1
        ks[_far_key(far)] = k
    top_n = min(n_imp, max((k + 1 for k in ks.values() if k is not None), default=0))

    hist = torch.zeros(_BUCKETS, dtype=torch.int64)
    tie_part = 0  # over impostors in shared buckets: (#genuine > s) + (#genuine >= s) in that bucket
    # Candidates for the top_n impostor scores: only buckets at or above `floor_bucket` can hold
    # them, the highest bucket with at least top_n impostor scores counted at or above it so far.
    cand_scores: list[Tensor] = []
    cand_count, floor_bucket = 0, 0
    for c0 in range(0, n, rows):
        imp = _impostor_scores(emb, id_end, c0, min(c0 + rows, n))
        if imp.numel() == 0:
            continue
        b = _bucket(imp)
        hist += torch.bincount(b, minlength=_BUCKETS)
        in_shared = shared[b]
        if bool(in_shared.any()):
            s, hi = imp[in_shared], gen_start[b[in_shared] + 1]
            right = torch.searchsorted(gen, s, right=True)  # genuine scores <= s
            tie_part += 2 * int(hi.sum()) - 2 * int(right.sum())
            tied = right > 0
            tied[tied.clone()] = gen[right[tied] - 1] == s[tied]
            if bool(tied.any()):  # genuine scores equal to s count one half (once more)
                tie_part += int((right[tied] - torch.searchsorted(gen, s[tied], right=False)).sum())
        if top_n:
            at_least = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # impostors in buckets >= b
            floor_bucket = max(floor_bucket, int(torch.searchsorted(-at_least, torch.tensor([-top_n]), right=True)) - 1)
            cand_scores.append(imp[b >= floor_bucket])
            cand_count += cand_scores[-1].numel()
            if cand_count > 2 * top_n:  # drop what a raised floor_bucket has ruled out
                sc = torch.cat(cand_scores)
                cand_scores = [sc[_bucket(sc) >= floor_bucket]]
                cand_count = cand_scores[0].numel()

    # AUC: genuine scores in higher buckets beat the impostor (2 halves), lower ones lose
    gen_above_bucket = n_gen - gen_start[1:]
    twice_wins = 2 * int((hist * gen_above_bucket).sum()) + tie_part
    auc = twice_wins / (2 * n_gen * n_imp)

    if top_n:
        top = torch.sort(torch.cat(cand_scores), descending=True).values[:top_n]
    else:
        top = gen[:0]
    asc_top = torch.flip(top, [0])

    def count_above(sorted_asc: Tensor, t: Tensor, strict: bool) -> int:
        return sorted_asc.numel() - int(torch.searchsorted(sorted_asc, t.reshape(1), right=strict))

    report: dict[str, dict] = {}
    for far in far_list:
        key = _far_key(far)
        k = ks[key]
        if k is None:
            needed = math.ceil(1.0 / far - 1e-9)
            report[key] = dict(tar=None, far=None, imp=None, gen=None, t=None,
                               note=f"too few impostor pairs: {n_imp} < {needed} needed for FAR {key}")
            continue
        if k >= n_imp:
            acc_imp, acc_gen, t_val, note = n_imp, n_gen, None, "FAR 1 accepts every pair"
        else:
            t = top[k]
            acc_imp, acc_gen = count_above(asc_top, t, True), count_above(gen, t, True)
            t_val, note = float(t), None
        report[key] = dict(tar=acc_gen / n_gen, far=acc_imp / n_imp, imp=acc_imp, gen=acc_gen, t=t_val, note=note)

    # Exact ROC points as counts of (impostor, genuine) pairs accepted, in three families, each
    # in threshold order: bucket edges (accept when bucket >= j), the top impostor scores
    # (accept when score >= u, for u whose every copy is in the list) and the operating points.
    imp_ge = n_imp - torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(hist, 0)])
    families = [(torch.flip(imp_ge, [0]).numpy(), torch.flip(n_gen - gen_start, [0]).numpy())]
    if top.numel():
        vals, counts = torch.unique_consecutive(top, return_counts=True)
        full = vals > top[-1] if top.numel() < n_imp else torch.ones_like(vals, dtype=torch.bool)
        families.append((torch.cumsum(counts, 0)[full].numpy(),
                         (n_gen - torch.searchsorted(gen, vals[full], right=False)).numpy()))
    ops = sorted((r["imp"], r["gen"]) for r in report.values() if r["imp"] is not None)
    families.append((np.array([0] + [o[0] for o in ops] + [n_imp]), np.array([0] + [o[1] for o in ops] + [n_gen])))
    fpr, tpr = _thin_roc(families, n_imp, n_gen, np.array([o[0] for o in ops], dtype=np.int64))
    return {
        "num_genuine": n_gen,
        "num_impostor": n_imp,
        "auc": float(auc),
        "tar_at_far": {k: r["tar"] for k, r in report.items()},
        "far_achieved": {k: r["far"] for k, r in report.items()},
        "impostors_accepted": {k: r["imp"] for k, r in report.items()},
        "genuine_accepted": {k: r["gen"] for k, r in report.items()},
        "thresholds": {k: r["t"] for k, r in report.items()},
        "notes": {k: r["note"] for k, r in report.items() if r["note"]},
        "roc": {"fpr": fpr, "tpr": tpr},
        "far_convention": FAR_CONVENTION,
    }


# --------------------------------------------------------------------------- end to end


def _quality_split(pair_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low / high halves by pair quality: ranks below the median are 'low', the rest 'high'.

    A split by rank rather than by value keeps the halves equal in size when many pairs share
    the median quality; ties are broken by pair order (stable sort).
    """
    order = np.argsort(pair_q, kind="stable")
    low = np.zeros(pair_q.size, dtype=bool)
    low[order[: pair_q.size // 2]] = True
    return low, ~low


def evaluate_verification(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    qualities: Tensor | None = None,
    num_pairs: int = 6000,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
    fars: Sequence[float] = DEFAULT_FARS,
    chunk_rows: int | None = None,
) -> dict:
    """Embed, score by cosine similarity and report, as a JSON-serialisable dict.

    Two sets of pairs, each for what it does best:

    - the LFW protocol on a sampled list of `num_pairs` pairs (`make_pairs`, half genuine):
      'num_pairs', 'num_genuine', 'num_impostor' (that list), 'accuracy_mean', 'accuracy_std'
      (10-fold, `kfold_accuracy`) and, with `qualities` (one value in [0, 1] per image),
      'by_quality': {'low': ..., 'high': ...}. A pair's quality is the lower of its two
      images'; the pairs are split at the median pair quality into two halves of equal size
      (ties at the median broken by pair order), each with 'accuracy_mean', 'accuracy_std',
      'num_pairs', 'mean_quality' (accuracy None if a half has fewer than 10 genuine or 10
      impostor pairs).
      `num_pairs` is capped so that no pair repeats, and must leave at least 10 genuine and 10
      impostor pairs (one of each per fold).
    - every pair of the set (`all_pairs_verification`, `chunk_rows` rows of the similarity
      matrix at a time), so that a low FAR rests on many impostor pairs (hundreds at 1e-4 for
      3,000 images): 'num_genuine_all', 'num_impostor_all', 'auc', 'tar_at_far'
      ({"1e-2": TAR or None, ...} for `fars`), 'far_achieved' (the FAR at which each TAR was
      read, at most the target), 'impostors_accepted' and 'genuine_accepted' (how many pairs
      that operating point accepts), 'far_thresholds' (accept when score > threshold),
      'tar_at_far_notes' (reason for each None), 'roc' ({'fpr', 'tpr'} lists, a few hundred
      exact points) and 'far_convention' (the sentence below).

    FAR convention: the threshold for a target FAR accepts at most FAR x n_impostor impostor
    pairs (score > the next-highest impostor score), so far_achieved <= FAR; interpolating the
    ROC at exactly FAR, the other common convention, can read a slightly higher TAR.
    """
    labels = _check_labels(labels)
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images must be a tensor of shape [N, 3, H, W]")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have one entry per image: {labels.shape[0]} labels for {images.shape[0]} images")
    far_list = _check_fars(fars)
    q = None
    if qualities is not None:
        q = torch.as_tensor(qualities).detach().cpu().double()
        if q.dim() != 1 or q.shape[0] != images.shape[0]:
            raise ValueError(f"qualities must be 1-D with one value per image ({images.shape[0]}), got shape {tuple(q.shape)}")
        if not bool(((q >= 0) & (q <= 1)).all()):
            raise ValueError("qualities must lie in [0, 1]")

    counts = torch.unique(labels, return_counts=True)[1]
    genuine_pool = int((counts * (counts - 1) // 2).sum())
    impostor_pool = (labels.numel() ** 2 - int((counts * counts).sum())) // 2
    asked = int(num_pairs)
    num_pairs = min(asked, 2 * min(genuine_pool, impostor_pool))
    if num_pairs // 2 < _FOLDS:  # fail before embedding: each of the 10 folds needs both kinds of pair
        if num_pairs == asked:
            raise ArgumentError("num_pairs", f"must be at least {2 * _FOLDS} ({_FOLDS} genuine and {_FOLDS} impostor "
                                             f"pairs for the {_FOLDS}-fold accuracy), got {asked}")
        raise ArgumentError("num_pairs", f"is capped at {num_pairs} by these labels ({genuine_pool} genuine and "
                                         f"{impostor_pool:,} impostor pairs exist), but the {_FOLDS}-fold accuracy "
                                         f"needs at least {_FOLDS} of each: pass more images per identity or more "
                                         f"identities")
    idx_a, idx_b, is_same = make_pairs(labels, num_pairs, seed=seed)
    emb = embed(model, images, batch_size=batch_size, device=device, progress=progress)
    scores = (emb[idx_a] * emb[idx_b]).sum(dim=1)

    acc = kfold_accuracy(scores, is_same, folds=_FOLDS)
    every = all_pairs_verification(emb, labels, fars=far_list, chunk_rows=chunk_rows)
    n_gen = int(is_same.sum())
    results: dict[str, Any] = {
        "num_pairs": int(is_same.numel()),
        "num_genuine": n_gen,
        "num_impostor": int(is_same.numel()) - n_gen,
        "accuracy_mean": acc["accuracy_mean"],
        "accuracy_std": acc["accuracy_std"],
        "num_genuine_all": every["num_genuine"],
        "num_impostor_all": every["num_impostor"],
        "auc": every["auc"],
        "tar_at_far": every["tar_at_far"],
        "far_achieved": every["far_achieved"],
        "impostors_accepted": every["impostors_accepted"],
        "genuine_accepted": every["genuine_accepted"],
        "far_thresholds": every["thresholds"],
        "tar_at_far_notes": every["notes"],
        "far_convention": every["far_convention"],
        "roc": every["roc"],
    }
    if q is not None:
        pair_q = torch.minimum(q[idx_a], q[idx_b]).numpy()
        s_np, y_np = scores.double().numpy(), is_same.numpy()
        by_quality = {}
        for name, mask in zip(("low", "high"), _quality_split(pair_q)):
            group: dict[str, Any] = {"num_pairs": int(mask.sum()), "mean_quality": float(pair_q[mask].mean()) if mask.any() else None}
            genuine = int(y_np[mask].sum())
            if min(genuine, int(mask.sum()) - genuine) >= _FOLDS:  # each fold needs both kinds
                g = kfold_accuracy(s_np[mask], y_np[mask], folds=_FOLDS)
                group.update(accuracy_mean=g["accuracy_mean"], accuracy_std=g["accuracy_std"])
            else:
                group.update(accuracy_mean=None, accuracy_std=None)
            by_quality[name] = group
        results["by_quality"] = {"high": by_quality["high"], "low": by_quality["low"]}
    return results


def verification_summary(results: dict) -> str:
    """A few rounded lines describing a result of `evaluate_verification`, with the number of
    pairs behind each figure. Results stored before the all-pairs figures existed still print."""
    if not isinstance(results, dict) or "accuracy_mean" not in results:
        raise ValueError("results must be a dict returned by evaluate_verification (it needs 'accuracy_mean')")
    lines = []
    all_pairs = "num_impostor_all" in results and "num_genuine_all" in results
    if "num_pairs" in results:
        extra = ""
        if "num_genuine" in results and "num_impostor" in results:
            extra = f" ({results['num_genuine']:,} genuine, {results['num_impostor']:,} impostor)"
        what = " sampled for the 10-fold accuracy" if all_pairs else ""
        lines.append(f"pairs: {results['num_pairs']:,}{what}{extra}")
    lines.append(f"10-fold accuracy: {results['accuracy_mean']:.3f} ± {results.get('accuracy_std', 0.0):.3f}")
    n_imp = results.get("num_impostor", "?")
    if all_pairs:
        n_gen_all, n_imp = results["num_genuine_all"], results["num_impostor_all"]
        lines.append(f"pairs: all {n_gen_all + n_imp:,} for AUC and TAR@FAR ({n_gen_all:,} genuine, {n_imp:,} impostor)")
    if results.get("auc") is not None:
        lines.append(f"AUC: {results['auc']:.4f}")
    notes = results.get("tar_at_far_notes", {})
    achieved = results.get("far_achieved", {})
    accepted = results.get("impostors_accepted", {})
    genuine = results.get("genuine_accepted", {})
    for key, tar in results.get("tar_at_far", {}).items():
        if tar is None:
            why = notes.get(key, "not enough impostor pairs")
            lines.append(f"TAR@FAR={key}: n/a ({why})")
            continue
        line = f"TAR@FAR={key}: {tar:.3f}"
        parts = []
        if genuine.get(key) is not None and all_pairs:
            parts.append(f"{genuine[key]:,} of {results['num_genuine_all']:,} genuine pairs accepted")
        if achieved.get(key) is not None:
            where = f"at FAR {achieved[key]:.2g}"
            if accepted.get(key) is not None:
                n = f"{n_imp:,}" if isinstance(n_imp, int) else n_imp
                where += f": {accepted[key]:,} of {n} impostor pairs accepted"
            parts.append(where)
        lines.append(line + (f" ({'; '.join(parts)})" if parts else ""))
    if all_pairs and results.get("tar_at_far"):
        lines.append("TAR@FAR rule: accept score > the (k+1)-th highest impostor score, "
                     "k = floor(FAR x impostor pairs), so the FAR achieved is at most the target")
    for name in ("high", "low"):
        group = results.get("by_quality", {}).get(name)
        if group is None:
            continue
        if group.get("accuracy_mean") is None:
            lines.append(f"{name}-quality pairs ({group['num_pairs']}): too few genuine or impostor pairs for 10 folds")
        else:
            lines.append(
                f"{name}-quality pairs ({group['num_pairs']}): accuracy {group['accuracy_mean']:.3f} ± {group['accuracy_std']:.3f}"
            )
    return "\n".join(lines)


#: How the course's stored runs and sweeps read AUC and TAR@FAR (`all_pairs_verification`).
ALL_PAIRS_PROTOCOL = ("all pairs: AUC and TAR@FAR from every genuine and every impostor pair of the evaluation set "
                      "(all_pairs_verification); the 10-fold accuracy from the sampled LFW-style pair list")


def over_seeds(runs: Sequence[dict]) -> dict:
    """Means over the runs of one setting (one per seed) and their spread (population std over
    seeds; 0 for one seed): 'accuracy_mean', 'accuracy_seed_std', 'tar_at_far' and
    'tar_at_far_seed_std' ({"1e-2": ...}; a None TAR counts as 0), 'auc', 'auc_seed_std'."""
    if not runs:
        raise ValueError("runs is empty: give at least one run")

    def spread(values: list[float]) -> float:
        return float(np.std(values)) if len(values) > 1 else 0.0

    accs = [r["accuracy_mean"] for r in runs]
    keys = list(runs[0]["tar_at_far"])
    tars = {k: [r["tar_at_far"].get(k) or 0.0 for r in runs] for k in keys}
    out: dict[str, Any] = {"accuracy_mean": float(np.mean(accs)), "accuracy_seed_std": spread(accs),
                           "tar_at_far": {k: float(np.mean(v)) for k, v in tars.items()},
                           "tar_at_far_seed_std": {k: spread(v) for k, v in tars.items()}}
    aucs = [r.get("auc") for r in runs]
    if all(a is not None for a in aucs):
        out.update(auc=float(np.mean(aucs)), auc_seed_std=spread(aucs))
    return out


_FAR_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_roc(results_or_list: dict | Sequence[dict], labels: str | Sequence[str] | None = None, ax: Any = None,
             title: str | None = None) -> Any:
    """ROC curves (TAR against FAR on a log axis) of one or several results.

    Each result is a dict from `evaluate_verification` (it needs 'roc'); its TAR@FAR values
    are marked on the curve at the FAR where they were read ('far_achieved'), one marker shape
    per target FAR, each shape with its own legend entry. The FAR axis starts a decade below the
    smallest target or achieved FAR, so no operating point sits on the edge; the TAR axis spans
    0 to 1. Returns the matplotlib Axes; never calls plt.show().
    """
    import matplotlib.pyplot as plt

    results = [results_or_list] if isinstance(results_or_list, dict) else list(results_or_list)
    if not results:
        raise ValueError("results_or_list is empty; pass a result dict or a list of them")
    if labels is None:
        names: list[str | None] = [None] * len(results)
    else:
        names = [labels] if isinstance(labels, str) else list(labels)
        if len(names) != len(results):
            raise ValueError(f"labels must have one entry per result: {len(names)} labels for {len(results)} results")
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "roc" not in res:
            raise ValueError(f"result {i} has no 'roc' entry; pass dicts returned by evaluate_verification")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.2))

    far_keys = list(dict.fromkeys(k for res in results for k in res.get("tar_at_far", {})))
    marker_of = {k: _FAR_MARKERS[i % len(_FAR_MARKERS)] for i, k in enumerate(far_keys)}
    smallest = [float(k) for res in results for k, v in res.get("tar_at_far", {}).items() if v is not None]
    marked = set()
    for i, (res, name) in enumerate(zip(results, names)):
        fpr = np.asarray(res["roc"]["fpr"], dtype=float)
        tpr = np.asarray(res["roc"]["tpr"], dtype=float)
        label = name if name is not None else f"result {i}"
        if res.get("auc") is not None:
            label += f" (AUC {res['auc']:.4f})"
        shown = fpr > 0  # FPR 0 has no place on a log axis
        (line,) = ax.plot(fpr[shown], tpr[shown], label=label)
        achieved = res.get("far_achieved", {})
        for key, tar in res.get("tar_at_far", {}).items():
            x = achieved.get(key, float(key))
            if tar is None or not x:  # FAR 0 (no impostor accepted) has no place on a log axis either
                continue
            ax.plot([x], [tar], linestyle="none", marker=marker_of[key], color=line.get_color(), markersize=6,
                    markeredgecolor="black", markeredgewidth=0.6)
            smallest.append(x)
            marked.add(key)
    for key in far_keys:  # one legend entry per marker shape, in a neutral colour
        if key in marked:
            ax.plot([], [], linestyle="none", marker=marker_of[key], color="white", markeredgecolor="black",
                    label=f"TAR at FAR \u2264 {key}")
    left = 10.0 ** math.floor(math.log10(min(smallest) / 1.5)) if smallest else 1e-4
    chance = np.logspace(math.log10(left), 0, 50)
    ax.plot(chance, chance, linestyle="--", color="grey", linewidth=0.8, label="chance (TAR = FAR)")
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR: fraction of impostor pairs accepted (log scale)")
    ax.set_ylabel("TAR: fraction of genuine pairs accepted")
    if title is None:
        every = all("num_impostor_all" in res for res in results)
        title = "ROC, all pairs of the evaluation set" if every else "ROC of the verification pairs"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")  # "best" keeps clear of the curves and the markers
    return ax


def plot_quality_split(results: dict, ax: Any = None, title: str | None = None) -> Any:
    """10-fold accuracy of all pairs and of the high- and low-quality halves, with the spread over
    the folds as error bars (the ± that `verification_summary` prints)."""
    import matplotlib.pyplot as plt

    groups = results.get("by_quality")
    if not groups or "high" not in groups or "low" not in groups:
        raise ValueError("results has no 'by_quality' split: evaluate_verification adds it when it is given "
                         "the images' quality")
    ax = ax or plt.subplots(figsize=(5, 3.4))[1]
    names = ["all pairs", "high quality", "low quality"]
    rows = [results, groups["high"], groups["low"]]
    means = [r["accuracy_mean"] for r in rows]
    stds = [r["accuracy_std"] for r in rows]
    ax.bar(names, means, yerr=stds, capsize=5, color=["C0", "C2", "C3"], label="mean over the 10 folds")
    for i, (mean, std) in enumerate(zip(means, stds)):
        ax.text(i, mean + std + 0.01, f"{mean:.3f}", ha="center", fontsize=9)
    # 0.5 is chance for balanced pairs: the axis starts there rather than at 0 so that the
    # differences stay readable; the title says so.
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("10-fold verification accuracy")
    ax.set_title(title or "accuracy by pair quality (axis from chance, 0.5)", fontsize=10)
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="k", capsize=5, label="± std over the folds")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    return ax
