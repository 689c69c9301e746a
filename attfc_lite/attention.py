"""The attention loader: attention weights over an identity's K key images, and the GCC (lesson 05).

For each query (its normalised embedding q, with gradient) and the K raw key embeddings
k_1..k_K of the same identity from the key encoder:

    s_j = cos(q, k_j),   a = softmax(s / temperature) over j,   GCC = normalize(sum_j a_j k_j)

The GCC, the generative class centre, is a class centre made for this query from the keys
(AttFC's stand-in for a row of the FC weight). The weighted sum is over the *raw* keys, as in
the official code, so a key with a larger norm pulls harder; only the weights use cosines.
With temperature 1 (the paper's) the weights of K keys differ by at most e^2 ~ 7.4x.

Everything is batched over B and K (no Python loop over K, no host synchronisation), so the
CPU and CUDA give the same numbers up to rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import ArgumentError, as_float

#: The temperatures the attention takes: past them the weights are one-hot or uniform to float32
#: precision, and cos / T overflows (inf - inf is nan).
TEMPERATURE_RANGE = (1e-3, 1e3)

__all__ = ["TEMPERATURE_RANGE", "attention_weights", "generative_class_centres", "quality_study", "plot_quality_study", "rank_correlation",
           "spearman_interval", "degradation_gaps", "DEGRADATIONS"]


def _check(q: torch.Tensor, keys: torch.Tensor, temperature: float) -> None:
    if q.dim() != 2:
        raise ValueError(f"q must be [batch, embedding_dim], got shape {tuple(q.shape)}")
    if keys.dim() != 3 or keys.shape[0] != q.shape[0] or keys.shape[2] != q.shape[1]:
        raise ValueError(f"keys must be [batch={q.shape[0]}, K, embedding_dim={q.shape[1]}], got shape "
                         f"{tuple(keys.shape)}; the key encoder's output for K key images per query")
    if keys.shape[1] < 1:
        raise ValueError("keys must hold at least one key image per query (K >= 1)")
    check_temperature(temperature)


def check_temperature(temperature) -> float:
    """`temperature` as a float within TEMPERATURE_RANGE, refused with the cause otherwise."""
    low, high = TEMPERATURE_RANGE
    value = as_float("temperature", temperature)
    if not low <= value <= high:
        raise ArgumentError("temperature", f"must be between {low:g} and {high:g}, got {value!r}: past these the "
                                           f"attention over the keys is one-hot or uniform, and cos / temperature "
                                           f"overflows to a nan softmax")
    return value


def attention_weights(q: torch.Tensor, keys: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the K keys of cos(q, k_j) / temperature: [B, K], each row sums to 1.

    `q`: [B, D] query embeddings (normalised here, so raw ones are fine too); `keys`: [B, K, D].
    """
    _check(q, keys, temperature)
    cos = torch.einsum("bd,bkd->bk", F.normalize(q, dim=1), F.normalize(keys, dim=2))
    return torch.softmax(cos / temperature, dim=1)


def generative_class_centres(q: torch.Tensor, keys: torch.Tensor,
                             temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [B, K], GCC [B, D]): the attention weights and the unit-norm weighted sum of the raw keys.

    Both are constants, as in the official code: `q` enters detached and the keys carry no
    gradient, so the query learns only from the logits the GCC takes part in."""
    with torch.no_grad():
        weights = attention_weights(q.detach(), keys.detach(), temperature)
        centre = torch.einsum("bk,bkd->bd", weights, keys.detach())
        return weights, F.normalize(centre, dim=1)


DEGRADATIONS = ("blur", "noise", "down", "occ")


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    import numpy as np

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average ranks of ties
            tie = v == value
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _z_se(n: int) -> float:
    """Standard error of Fisher's z of a Spearman correlation from n pairs (Fieller, Hartley and
    Pearson, 1957): sqrt(1.06 / (n - 3))."""
    import math

    return math.sqrt(1.06 / (n - 3)) if n > 3 else float("inf")


def spearman_interval(r: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """An approximate 95 % interval (z = 1.96) of a Spearman correlation r measured on n pairs."""
    import math

    if not math.isfinite(r) or n <= 3:
        return (float("nan"), float("nan"))
    centre = math.atanh(max(-0.999999, min(0.999999, r)))
    return (math.tanh(centre - z * _z_se(n)), math.tanh(centre + z * _z_se(n)))


def degradation_gaps(study: dict, z: float = 1.96) -> list[dict]:
    """Every pair of degradation types of a `quality_study`: the difference of their Spearman
    correlations and whether it is beyond noise, i.e. the difference of their Fisher z exceeds
    z standard errors of it (the two groups of keys taken as independent). Largest gap first."""
    import math

    rows = [(name, row) for name, row in study["by_degradation"].items() if math.isfinite(row["spearman"])]
    gaps = []
    for i, (a, ra) in enumerate(rows):
        for b, rb in rows[i + 1:]:
            za, zb = (math.atanh(max(-0.999999, min(0.999999, r["spearman"]))) for r in (ra, rb))
            se = math.hypot(_z_se(ra["keys"]), _z_se(rb["keys"]))
            hi, lo = ((a, ra), (b, rb)) if ra["spearman"] >= rb["spearman"] else ((b, rb), (a, ra))
            gaps.append({"higher": hi[0], "lower": lo[0], "difference": hi[1]["spearman"] - lo[1]["spearman"],
                         "z": abs(za - zb) / se, "beyond_noise": abs(za - zb) > z * se})
    return sorted(gaps, key=lambda g: -g["difference"])


@torch.no_grad()
def quality_study(encoder_q: torch.nn.Module, encoder_k: torch.nn.Module, world, identities: torch.Tensor,
                  k: int = 4, temperature: float = 1.0, device=None) -> dict:
    """Attention weights against the ground-truth quality of the key images, for unseen identities.

    For each identity, image 0 is the query and images 1..k its keys (all distinct). Both
    encoders run as in training (train mode: BatchNorm normalises by the batch's own
    statistics), on copies so that their running statistics stay untouched: the weights are
    the ones the head would use to build these GCCs. Returns numpy arrays:
    'weights' [n, k], 'quality' [n, k] (the keys'), 'query_quality' [n], 'degradation' [n, k]
    (index into DEGRADATIONS of each key's strongest degradation), 'severity' [n, k], and
    summaries: 'spearman' (all keys), 'top_is_best' (share of identities whose most-weighted
    key is their best one; chance: 1 / k) with 'top_is_best_ci' (its 95 % binomial interval),
    'by_degradation' (Spearman within each type, over keys whose degradation is visible:
    severity > 0.05, with its approximate 95 % 'interval', `spearman_interval`) and
    'clean_keys' (the others). `degradation_gaps` says which differences between types exceed noise.
    """
    import copy

    import numpy as np

    identities = torch.as_tensor(identities).reshape(-1)
    n = identities.numel()
    ids = identities.repeat_interleave(k + 1)
    idx = torch.arange(k + 1).repeat(n)
    out = world.render(ids, idx)
    params = world.image_params(ids, idx)
    device = device or next(encoder_q.parameters()).device
    enc_q, enc_k = copy.deepcopy(encoder_q).train(), copy.deepcopy(encoder_k).train()
    images = out.images.view(n, k + 1, *out.images.shape[1:]).to(device)
    q = enc_q(images[:, 0])
    keys = enc_k(images[:, 1:].reshape(n * k, *images.shape[2:])).view(n, k, -1)
    weights = attention_weights(q, keys, temperature).cpu().numpy()
    quality = out.quality.view(n, k + 1).cpu().numpy()
    strength = torch.stack([params["d_" + d] for d in DEGRADATIONS], 1).view(n, k + 1, len(DEGRADATIONS))
    degradation = strength.argmax(2).cpu().numpy()
    severity = params["severity"].view(n, k + 1).cpu().numpy()
    kq, kd = quality[:, 1:], degradation[:, 1:]
    best = kq.argmax(1)
    top = weights.argmax(1)
    by_type = {}
    for j, name in enumerate(DEGRADATIONS):
        mask = (kd == j) & (severity[:, 1:] > 0.05)  # a visible degradation of that type
        r = rank_correlation(weights[mask], kq[mask]) if mask.sum() > 2 else float("nan")
        by_type[name] = {"keys": int(mask.sum()), "spearman": r, "interval": spearman_interval(r, int(mask.sum()))}
    return {
        "weights": weights, "quality": kq, "query_quality": quality[:, 0], "degradation": kd,
        "severity": severity[:, 1:], "k": k, "num_identities": n,
        "spearman": rank_correlation(weights.ravel(), kq.ravel()),
        "top_is_best": float(np.mean(top == best)), "chance": 1.0 / k, "by_degradation": by_type,
        "top_is_best_ci": float(1.96 * np.sqrt(np.mean(top == best) * (1 - np.mean(top == best)) / n)),
        "clean_keys": int((severity[:, 1:] <= 0.05).sum()),
    }


def plot_quality_study(study: dict, axes=None):
    """Left: weight against key quality (all keys); right: Spearman by degradation type."""
    import matplotlib.pyplot as plt
    import numpy as np

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
    ax = axes[0]
    colours = ["C0", "C1", "C2", "C3"]
    for j, name in enumerate(DEGRADATIONS):
        mask = study["degradation"] == j
        ax.scatter(study["quality"][mask], study["weights"][mask], s=6, alpha=0.5, color=colours[j],
                   label=f"strongest degradation: {name}")
    ax.axhline(1 / study["k"], color="0.3", ls="--", lw=1, label=f"uniform weight 1/K = {1 / study['k']:.2f}")
    ax.set_xlabel("ground-truth quality of the key image")
    ax.set_ylabel("attention weight")
    ax.set_title(f"{study['num_identities']} unseen identities, K = {study['k']}: "
                 f"Spearman {study['spearman']:+.2f}", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    ax.grid(alpha=0.3)
    ax = axes[1]
    names = list(study["by_degradation"])
    values = [study["by_degradation"][n]["spearman"] for n in names]
    intervals = [study["by_degradation"][n].get("interval", (np.nan, np.nan)) for n in names]
    low = [v - lo if np.isfinite(lo) else 0.0 for v, (lo, _) in zip(np.nan_to_num(values), intervals)]
    high = [hi - v if np.isfinite(hi) else 0.0 for v, (_, hi) in zip(np.nan_to_num(values), intervals)]
    ax.bar(names, np.nan_to_num(values), color=colours, yerr=[low, high], capsize=4, ecolor="0.2",
           label="bars: 95 % interval")
    for i, n in enumerate(names):
        top_of = np.nan_to_num(values[i]) + (high[i] if np.nan_to_num(values[i]) >= 0 else -low[i])
        ax.text(i, top_of, f"{values[i]:+.2f}\n({study['by_degradation'][n]['keys']} keys)",
                ha="center", va="bottom" if np.nan_to_num(values[i]) >= 0 else "top", fontsize=7)
    ax.axhline(0, color="0.3", lw=0.8, label="0: no rank correlation")
    ax.set_ylabel("Spearman(weight, quality)")
    ax.set_xlabel("strongest degradation of the key image")
    ax.set_title("rank correlation within each type", fontsize=9)
    ends = [e for v, (lo_, hi_) in zip(values, intervals) for e in (v, lo_, hi_) if np.isfinite(e)]
    lo = min(ends) - 0.1 if ends and min(ends) < 0 else 0.0  # bars from 0; room below for negative labels
    hi = max(0, max(ends) if ends else 0) + 0.15
    ax.set_ylim(lo, hi)
    ax.legend(fontsize=7)
    return axes
