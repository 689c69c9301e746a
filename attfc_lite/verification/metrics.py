"""Figures from a list of scored pairs: the ROC curve and its area, the 10-fold accuracy of
the LFW protocol, and TAR at a fixed FAR (with the FAR targets' checks and keys) (lesson 01)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from ..checks import ArgumentError, as_int

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
_FOLDS = 10
# Distances to a target FAR closer than this count as equal, so that a target exactly between
# two ROC points is a tie despite rounding in k / num_impostor.
_TIE_TOL = 1e-12


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
