"""ROC, AUC and TAR@FAR over every pair of an evaluation set: the similarity matrix scored in
fixed tiles and row chunks, so that memory stays bounded and the figures are exact (lesson 01)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import DEFAULT_FARS, _TIE_TOL, _check_fars, _far_key, _impostors_needed
from .pairs import _check_labels

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
