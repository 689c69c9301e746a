"""A model end to end: embed labelled images, score the sampled pair list and every pair, and
report the figures as one JSON-serialisable dict (lesson 01)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..checks import ArgumentError
from .all_pairs import all_pairs_verification
from .embeddings import embed
from .metrics import DEFAULT_FARS, _FOLDS, _check_fars, kfold_accuracy
from .pairs import _check_labels, _quality_split, make_pairs


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
