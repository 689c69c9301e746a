"""Lesson 07's watcher of the container, against a case worked out by hand."""
from __future__ import annotations

import pytest
import torch

from attfc_lite.heads.attfc import AttFC
from attfc_lite.container import TurnoverWatch, plot_turnover


def test_turnover_watch_by_hand():
    head = AttFC(2, 10, container_size=5)
    watch = TurnoverWatch(10)
    for step, batch in enumerate([[0, 1, 2], [3, 0, 4], [1, 5, 6]], start=1):
        labels = torch.tensor(batch)
        head.container.enqueue(torch.randn(3, 2), labels)
        watch({"step": step, "labels": labels, "head": head})
    # step 1 met an empty container; step 2 met [0 1 2 - -]: only its 0 is own; step 3 met [4 1 2 3 0]: its 1
    assert watch.own_share == [0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert watch.own_entries == [0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert watch.filled == [0.6, 1.0, 1.0]
    # after step 2: [4 1 2 3 0]; after step 3: [4 1 5 6 0]
    assert watch.identities_present == [0.3, 0.5, 0.5]
    # ages as the next batch meets them: written by the step just taken = 1
    assert watch.mean_age == [1.0, pytest.approx(7 / 5), pytest.approx(7 / 5)]
    assert watch.max_age == [1, 2, 2]
    summary = watch.summary()  # from the step after the container first filled (step 2)
    assert summary["from_step"] == 3 and summary["own_share"] == pytest.approx(1 / 3)


def test_turnover_watch_counts_repeats_and_rejects_other_heads():
    head = AttFC(2, 10, container_size=4)
    watch = TurnoverWatch(10)
    head.container.enqueue(torch.randn(4, 2), torch.tensor([7, 7, 7, 1]))
    watch({"step": 1, "labels": torch.tensor([7, 7, 7, 1]), "head": head})
    head.container.enqueue(torch.randn(2, 2), torch.tensor([7, 2]))
    watch({"step": 2, "labels": torch.tensor([7, 2]), "head": head})
    # the 7 of step 2 met three entries of its own identity, the 2 none
    assert watch.own_entries[1] == pytest.approx(1.5) and watch.own_share[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="attfc"):
        watch({"step": 3, "labels": torch.tensor([0]), "head": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="num_classes"):
        TurnoverWatch(0)
    with pytest.raises(ValueError, match="callback"):
        TurnoverWatch(5).summary()


def test_plot_turnover_draws():
    import matplotlib.pyplot as plt

    head = AttFC(2, 10, container_size=3)
    watch = TurnoverWatch(10)
    for step in range(1, 5):
        labels = torch.tensor([step % 10, (step + 3) % 10])
        head.container.enqueue(torch.randn(2, 2), labels)
        watch({"step": step, "labels": labels, "head": head})
    ax, ax_age = plot_turnover(watch, expected_present=0.27)
    assert len(ax.get_lines()) == 3 and len(ax_age.get_lines()) == 2
    plt.close("all")
