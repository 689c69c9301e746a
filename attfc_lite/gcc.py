"""Generative class centres, measured: how close a GCC is to a true class centre, and how it moves (lesson 06).

`attention.generative_class_centres` makes a GCC from a query and its K key embeddings.
This module asks two questions of it (lesson 06):

- `gcc_vs_tcc`: inside one trained FC model, whose rows are the true class centres (TCC),
  how close to an identity's TCC is (a) the attention-weighted GCC of K images of it,
  (b) the plain mean of the same K embeddings, (c) one image alone, for several K and for
  keys of low and high ground-truth quality?
- `GCCTrajectory`: during an AttFC run, how far an identity's GCC moves from one of its
  appearances to the next, against how far two GCCs of one identity made in the same step
  from different key images lie apart (the part of the movement that is only the key draw).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .attention import generative_class_centres

__all__ = ["gcc_vs_tcc", "plot_gcc_vs_tcc", "GCCTrajectory", "plot_trajectory"]


@torch.no_grad()
def _raw_embeddings(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """model(images) in eval mode, not normalised (the GCC sums raw keys); modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        dev = next(model.parameters(), torch.empty(0)).device
        return torch.cat([model(images[s:s + batch_size].to(dev)).float().cpu()
                          for s in range(0, images.shape[0], batch_size)])
    finally:
        for m, mode in modes:
            m.train(mode)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    se = float(values.std(unbiased=True)) / math.sqrt(values.numel()) if values.numel() > 1 else float("nan")
    return float(values.mean()), se


def gcc_vs_tcc(backbone: torch.nn.Module, class_centres: torch.Tensor, dataset, k_values: Sequence[int] = (1, 2, 4, 8),
               identities: int = 300, draws: int = 4, temperature: float = 1.0, seed: int = 0) -> dict:
    """Cosine to the TCC of an attention GCC, a plain mean and a single image, by K and by key quality.

    `class_centres` [N, D]: the trained FC head's weight (row y is identity y's TCC);
    `dataset`: the training split it was trained on (`SyntheticFaces`, with `labels` and
    `quality`). For each of the first `identities` identities and each of `draws` random
    draws, one image is the query and the next K of a shuffled order are its keys (the keys
    of a smaller K are the first of a larger K's, so the K compare like with like).
    Embeddings come from `backbone` in eval mode.

    Returns per K ('by_k', a list): the mean cosine of 'gcc', 'mean', 'single' (the first key
    alone) and 'query' (the query image itself), each with its standard error; 'gain' (GCC
    minus mean, paired) with its standard error; and 'by_quality', the same gain and cosines in
    the halves of the draws whose keys have a mean quality below and above the median.
    """
    labels = getattr(dataset, "labels", None)
    quality = getattr(dataset, "quality", None)
    if labels is None or quality is None or not hasattr(dataset, "get_batch"):
        raise ValueError("dataset must be a SyntheticFaces training split (it needs labels, quality and get_batch)")
    k_values = sorted({int(k) for k in k_values})
    per_identity = int((labels == labels[0]).sum())
    if not k_values or k_values[0] < 1 or k_values[-1] + 1 > per_identity:
        raise ValueError(f"k_values must lie in [1, {per_identity - 1}]: one query and K keys among an identity's "
                         f"{per_identity} images, got {k_values}")
    if class_centres.dim() != 2 or class_centres.shape[0] < int(labels.max()) + 1:
        raise ValueError(f"class_centres must be the FC weight [num_classes, D] of the model trained on dataset, "
                         f"got shape {tuple(class_centres.shape)}")
    identities = min(int(identities), int(labels.max()) + 1)
    ids = torch.arange(identities)
    # Items of identity i are i * per_identity + 0..per_identity-1 (SyntheticFaces' layout).
    items = (ids[:, None] * per_identity + torch.arange(per_identity)[None, :])
    if not bool((labels[items] == ids[:, None]).all()):
        raise ValueError("dataset must keep each identity's images together (SyntheticFaces' layout)")
    images, _, _ = dataset.get_batch(items.reshape(-1))
    emb = _raw_embeddings(backbone, images).view(identities, per_identity, -1)
    tcc = F.normalize(class_centres.detach().float().cpu()[:identities], dim=1)
    q_all = quality.double()[items]  # [identities, per_identity]

    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.stack([torch.randperm(per_identity, generator=gen) for _ in range(identities)])
                         for _ in range(draws)])  # [draws, identities, per_identity]
    rows = torch.arange(identities)[None, :, None]
    by_k = []
    for k in k_values:
        query = F.normalize(emb[rows[..., 0], order[..., 0]], dim=-1)  # [draws, identities, D]
        keys = emb[rows, order[..., 1:1 + k]]  # [draws, identities, K, D]
        flat_keys = keys.reshape(-1, k, keys.shape[-1])
        _, gcc = generative_class_centres(query.reshape(-1, query.shape[-1]), flat_keys, temperature)
        mean = F.normalize(flat_keys.mean(1), dim=1)
        target = tcc[None].expand(draws, -1, -1).reshape(-1, tcc.shape[1])
        cos = {"gcc": (gcc * target).sum(1), "mean": (mean * target).sum(1),
               "single": (F.normalize(flat_keys[:, 0], dim=1) * target).sum(1),
               "query": (query.reshape(-1, query.shape[-1]) * target).sum(1)}
        key_quality = q_all[rows, order[..., 1:1 + k]].mean(-1).reshape(-1)
        low = key_quality < key_quality.median()
        row = {"k": k, "n": int(key_quality.numel())}
        for name, values in cos.items():
            row[name], row[name + "_se"] = _mean_and_se(values)
        row["gain"], row["gain_se"] = _mean_and_se(cos["gcc"] - cos["mean"])
        row["by_quality"] = {}
        for half, mask in (("low", low), ("high", ~low)):
            part = {"n": int(mask.sum()), "key_quality": float(key_quality[mask].mean())}
            for name in ("gcc", "mean", "single"):
                part[name] = float(cos[name][mask].double().mean())
            part["gain"], part["gain_se"] = _mean_and_se((cos["gcc"] - cos["mean"])[mask])
            row["by_quality"][half] = part
        by_k.append(row)
    return {"k_values": k_values, "identities": identities, "draws": draws, "temperature": temperature,
            "by_k": by_k}


def plot_gcc_vs_tcc(study: dict, axes=None):
    """Left: cosine to the TCC against K (GCC, mean, one key, the query). Right: GCC minus mean by key quality."""
    import matplotlib.pyplot as plt

    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3.6))[1]
    ax, ax_gain = axes
    ks = [r["k"] for r in study["by_k"]]
    styles = {"gcc": ("o-", "attention GCC"), "mean": ("s--", "plain mean of the K keys"),
              "single": (":", "one key image"), "query": ("-.", "the query image")}
    for name, (fmt, label) in styles.items():
        ax.errorbar(ks, [r[name] for r in study["by_k"]], yerr=[1.96 * r[name + "_se"] for r in study["by_k"]],
                    fmt=fmt, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K, key images per centre (log scale)")
    ax.set_ylabel("cosine to the true class centre")
    ax.set_title("how close each centre is to the FC row (95 % intervals)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    width = 0.35
    for i, (half, colour) in enumerate((("low", "tab:red"), ("high", "tab:green"))):
        gains = [r["by_quality"][half]["gain"] * 1000 for r in study["by_k"]]
        errs = [1.96 * r["by_quality"][half]["gain_se"] * 1000 for r in study["by_k"]]
        ax_gain.bar([j + (i - 0.5) * width for j in range(len(ks))], gains, width, yerr=errs, capsize=3,
                    color=colour, alpha=0.7, label=f"keys of {half} quality (half of the draws)")
    ax_gain.axhline(0, color="0.3", lw=1, label="0: attention adds nothing")
    ax_gain.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax_gain.set_xlabel("K, key images per centre")
    ax_gain.set_ylabel("GCC minus mean, cosine x 1000")
    ax_gain.set_title("what attention adds over the plain mean (95 % intervals)", fontsize=10)
    ax_gain.legend(fontsize=8)
    ax_gain.grid(alpha=0.3, axis="y")
    return axes


class GCCTrajectory:
    """A `train(callback=...)` watcher of the GCCs an AttFC head makes, step by step.

    For every identity it remembers the last GCC it got and records, at each new appearance,
    the cosine to the previous one ('moves': (step, identity, cosine)). Where one batch holds
    two queries of the same identity, their GCCs come from the same encoder and different key
    images: their cosine ('same_step': (step, cosine)) is the movement due to the key draw
    alone. The GCCs of the identities in `track` are kept whole ('tracked').
    """

    def __init__(self, track: Sequence[int] = (0,)) -> None:
        self.track = {int(i) for i in track}
        self.moves: list[tuple[int, int, float]] = []
        self.same_step: list[tuple[int, float]] = []
        self.tracked: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in sorted(self.track)}
        self._last: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, state: dict) -> None:
        head, keys = state["head"], state["keys"]
        weights = getattr(head, "last_weights", None)
        if keys is None or weights is None:
            raise ValueError("GCCTrajectory watches an AttFC run (head='attfc'): this head makes no GCCs")
        step, labels = int(state["step"]), state["labels"].detach().cpu().tolist()
        gcc = F.normalize(torch.einsum("bk,bkd->bd", weights.float(), keys.float()), dim=1).cpu()
        first: dict[int, int] = {}
        for row, identity in enumerate(labels):
            if identity in first:  # a second query of this identity in the same batch
                self.same_step.append((step, float(gcc[row] @ gcc[first[identity]])))
                continue
            first[identity] = row
            if identity in self._last:
                self.moves.append((step, identity, float(gcc[row] @ self._last[identity])))
            self._last[identity] = gcc[row].clone()
            if identity in self.track:
                self.tracked[identity].append((step, gcc[row].clone()))

    def to_final(self, identity: int) -> tuple[list[int], list[float]]:
        """Steps and cosines of a tracked identity's GCCs to its last one."""
        if identity not in self.tracked or not self.tracked[identity]:
            raise ValueError(f"identity {identity} was not tracked or never appeared; track it with "
                             f"GCCTrajectory(track=[{identity}, ...])")
        history = self.tracked[identity]
        last = history[-1][1]
        return [s for s, _ in history], [float(v @ last) for _, v in history]

    def binned(self, what: str = "moves", bins: int = 12) -> tuple[list[float], list[float]]:
        """Median cosine of 'moves' or 'same_step' in `bins` equal ranges of steps (bin centres, medians)."""
        pairs = [(m[0], m[-1]) for m in (self.moves if what == "moves" else self.same_step)]
        if not pairs:
            raise ValueError(f"nothing recorded in {what!r} yet: pass the watcher to train(callback=...)")
        last = max(s for s, _ in pairs)
        edges = [last * i / bins for i in range(bins + 1)]
        centres, medians = [], []
        for lo, hi in zip(edges, edges[1:]):
            values = torch.tensor([c for s, c in pairs if lo < s <= hi])
            if values.numel():
                centres.append((lo + hi) / 2)
                medians.append(float(values.median()))
        return centres, medians


def plot_trajectory(trajectory: GCCTrajectory, identity: int | None = None, ax=None):
    """Cosine of each GCC to the identity's previous one (medians), the same-step key-draw floor,
    and one tracked identity's cosine to its final GCC."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.6))[1]
    x, y = trajectory.binned("moves")
    ax.plot(x, y, "o-", label="to the identity's previous GCC (median)")
    x, y = trajectory.binned("same_step")
    ax.plot(x, y, "s--", label="two GCCs of one identity in one step (median)")
    if identity is not None:
        steps, cos = trajectory.to_final(identity)
        ax.plot(steps, cos, ".", alpha=0.6, label=f"identity {identity}: to its final GCC")
    ax.set_xlabel("training step")
    ax.set_ylabel("cosine between GCCs")
    ax.set_title("how the GCCs of an identity move during an AttFC run", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
