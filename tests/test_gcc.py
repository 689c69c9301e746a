"""Lesson 06's measurements of the GCC, against loops written out by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attfc_lite.gcc import GCCTrajectory, gcc_vs_tcc, plot_gcc_vs_tcc, plot_trajectory

IDS, PER, D = 6, 9, 12


class Table:
    """A stand-in training split whose image i *is* embedding i (3 x 2 x 2 = 12 numbers)."""

    def __init__(self, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(IDS).repeat_interleave(PER)
        self.quality = torch.rand(IDS * PER, generator=gen)
        self.embeddings = torch.randn(IDS * PER, D, generator=gen) + 2 * torch.randn(IDS, D, generator=gen).repeat_interleave(PER, 0)

    def get_batch(self, idx):
        return self.embeddings[idx].view(-1, 3, 2, 2), self.labels[idx], self.quality[idx]


def naive(table, centres, k, draws, seed):
    """Per (draw, identity): the cosines of the GCC, the mean, one key and the query to the TCC, in loops."""
    gen = torch.Generator().manual_seed(seed)
    orders = [[torch.randperm(PER, generator=gen) for _ in range(IDS)] for _ in range(draws)]
    rows = []
    for d in range(draws):
        for i in range(IDS):
            order = orders[d][i]
            emb = [table.embeddings[i * PER + int(j)] for j in order]
            q, keys = emb[0] / emb[0].norm(), emb[1:1 + k]
            sims = [float(q @ key / key.norm()) for key in keys]
            a = [math.exp(s) / sum(math.exp(t) for t in sims) for s in sims]
            gcc = sum(w * key for w, key in zip(a, keys))
            mean = sum(keys) / k
            tcc = centres[i] / centres[i].norm()
            cos = lambda v: float(v @ tcc / v.norm())  # noqa: E731
            quality = sum(float(table.quality[i * PER + int(j)]) for j in order[1:1 + k]) / k
            rows.append({"gcc": cos(gcc), "mean": cos(mean), "single": cos(keys[0]), "query": cos(q),
                         "quality": quality})
    return rows


@pytest.mark.parametrize("k", [1, 3, 8])
def test_gcc_vs_tcc_matches_the_loop(k):
    table = Table()
    centres = torch.randn(IDS, D, generator=torch.Generator().manual_seed(1))
    study = gcc_vs_tcc(nn.Flatten(), centres, table, k_values=(k,), identities=IDS, draws=3, seed=5)
    (row,) = study["by_k"]
    want = naive(table, centres, k, draws=3, seed=5)
    for name in ("gcc", "mean", "single", "query"):
        assert row[name] == pytest.approx(sum(r[name] for r in want) / len(want), abs=1e-5)
    gains = [r["gcc"] - r["mean"] for r in want]
    assert row["gain"] == pytest.approx(sum(gains) / len(gains), abs=1e-5)
    median = sorted(r["quality"] for r in want)[(len(want) - 1) // 2]  # torch's median: the lower middle
    low = [r for r in want if r["quality"] < median]
    assert row["by_quality"]["low"]["n"] == len(low)
    assert row["by_quality"]["low"]["gain"] == pytest.approx(sum(r["gcc"] - r["mean"] for r in low) / len(low), abs=1e-5)
    if k == 1:  # one key: the GCC, the mean and the key are the same centre
        assert row["gain"] == pytest.approx(0, abs=1e-6) and row["gcc"] == pytest.approx(row["single"], abs=1e-6)


def test_gcc_vs_tcc_rejects_too_many_keys_and_a_wrong_weight():
    table = Table()
    with pytest.raises(ValueError, match="k_values"):
        gcc_vs_tcc(nn.Flatten(), torch.randn(IDS, D), table, k_values=(PER,))
    with pytest.raises(ValueError, match="class_centres"):
        gcc_vs_tcc(nn.Flatten(), torch.randn(IDS - 1, D), table, k_values=(2,))
    with pytest.raises(ValueError, match="SyntheticFaces"):
        gcc_vs_tcc(nn.Flatten(), torch.randn(IDS, D), object(), k_values=(2,))


def test_trajectory_by_hand():
    watch = GCCTrajectory(track=[0])
    keys1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    weights1 = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    watch({"step": 1, "labels": torch.tensor([0, 1, 0]), "keys": keys1, "head": SimpleNamespace(last_weights=weights1)})
    # identity 0 twice in step 1: GCCs (1, 1)/sqrt 2 and (1, 0): cosine 1/sqrt 2
    assert watch.same_step == [(1, pytest.approx(1 / math.sqrt(2)))]
    assert watch.moves == []
    keys2 = torch.tensor([[[0.0, 3.0], [0.0, 1.0]]])
    watch({"step": 4, "labels": torch.tensor([0]), "keys": keys2,
           "head": SimpleNamespace(last_weights=torch.tensor([[0.5, 0.5]]))})
    # step 4's GCC (0, 1) against identity 0's first GCC of step 1, (1, 1)/sqrt 2
    assert watch.moves == [(4, 0, pytest.approx(1 / math.sqrt(2)))]
    steps, cos = watch.to_final(0)
    assert steps == [1, 4] and cos == [pytest.approx(1 / math.sqrt(2)), pytest.approx(1.0)]
    with pytest.raises(ValueError, match="track"):
        watch.to_final(1)
    with pytest.raises(ValueError, match="AttFC"):
        watch({"step": 5, "labels": torch.tensor([0]), "keys": None, "head": SimpleNamespace(last_weights=None)})


def test_plots_draw():
    import matplotlib.pyplot as plt

    table = Table()
    study = gcc_vs_tcc(nn.Flatten(), torch.randn(IDS, D), table, k_values=(1, 2, 4), identities=IDS, draws=2)
    ax, ax_gain = plot_gcc_vs_tcc(study)
    assert len(ax.get_legend().get_texts()) == 4 and len(ax_gain.patches) == 6
    watch = GCCTrajectory(track=[0])
    for step in range(1, 6):
        keys = F.normalize(torch.randn(4, 2, 3), dim=2)
        watch({"step": step, "labels": torch.tensor([0, 0, 1, 1]), "keys": keys,
               "head": SimpleNamespace(last_weights=torch.full((4, 2), 0.5))})
    ax = plot_trajectory(watch, identity=0)
    assert len(ax.get_lines()) == 3 and ax.get_xlabel() == "training step"
    plt.close("all")


def test_plot_gcc_vs_tcc_says_log_scale_and_labels_the_zero_line():
    import matplotlib.pyplot as plt

    def row(k):
        values = {name: 0.5 + 0.1 * i for i, name in enumerate(("gcc", "mean", "single", "query"))}
        return {"k": k, **values, **{name + "_se": 0.01 for name in values},
                "by_quality": {half: {"gain": 0.002, "gain_se": 0.001} for half in ("low", "high")}}

    ax, ax_gain = plot_gcc_vs_tcc({"by_k": [row(1), row(2), row(4)]})
    for a in (ax, ax_gain):
        assert a.get_title() and a.get_xlabel() and a.get_ylabel()
    assert "log scale" in ax.get_xlabel() and "log scale" not in ax_gain.get_xlabel()  # the bars sit side by side
    assert len(ax.get_legend().get_texts()) == 4
    texts = [t.get_text() for t in ax_gain.get_legend().get_texts()]
    assert len(texts) == 3 and any(t.startswith("0:") for t in texts)
    assert ax_gain.get_ylim()[0] <= 0  # the bars rise from 0
    plt.close("all")
