"""Lesson 10's figure of one rank's memory against one GPU's: the smallest world size that fits,
and what the figure draws (units, the capacity line, a legend entry for every marked point)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from attfc_lite.checks import ArgumentError
from attfc_lite.distributed.per_rank import fitting_world_size, plot_rank_memory_vs_capacity
from attfc_lite.memory import GiB, predict_memory


def test_fitting_world_size_is_the_first_world_size_whose_peak_fits():
    n, d, b = 30_000_000, 512, 128
    peaks = {p: predict_memory(n, d, b, head="fc", world_size=p).peak for p in (1, 2, 4, 8, 16)}
    capacity = 80 * GiB
    found = fitting_world_size("fc", n, d, b, capacity)
    assert found is not None and peaks[found] <= capacity
    assert all(peaks[p] > capacity for p in peaks if p < found)
    # the order of world_sizes does not matter; nothing fits a tiny card
    assert fitting_world_size("fc", n, d, b, capacity, world_sizes=(64, 8, 1, 16, 2, 4, 32)) == found
    assert fitting_world_size("fc", n, d, b, 1.0) is None
    # AttFC's rank holds the whole container: if one process does not fit, more do not either
    assert fitting_world_size("attfc", 100_000_000, d, b, 40 * GiB) is None
    assert fitting_world_size("attfc", 100_000_000, d, b, 80 * GiB) == 1
    with pytest.raises(ArgumentError):
        fitting_world_size("fc", n, d, b, 0)


def test_plot_rank_memory_vs_capacity_draws_gib_the_capacity_and_labels_every_point():
    n, d, b = 30_000_000, 512, 128
    ax = plot_rank_memory_vs_capacity(n, d, b, capacity_gib=80)
    try:
        assert "GiB" in ax.get_ylabel() and "P" in ax.get_xlabel() and f"{n:,}" in ax.get_title()
        lines = {line.get_label(): line for line in ax.get_lines()}
        fc = lines["fc (model)"]
        assert list(fc.get_xdata()) == [1, 2, 4, 8, 16, 32, 64]
        assert fc.get_ydata()[0] == pytest.approx(predict_memory(n, d, b, head="fc").peak / GiB)
        first = fitting_world_size("fc", n, d, b, 80 * GiB)
        assert f"fc: fits from P = {first}" in lines
        assert list(lines[f"fc: fits from P = {first}"].get_xdata()) == [first]
        assert "attfc: fits from P = 1" in lines
        assert list(lines["one GPU's memory (80 GiB)"].get_ydata()) == [80, 80]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert set(legend) == {label for label in lines if not label.startswith("_")}
    finally:
        plt.close(ax.figure)


def test_a_head_that_never_fits_says_so_in_the_legend():
    ax = plot_rank_memory_vs_capacity(100_000_000, 512, 128, capacity_gib=80, heads=("fc",))
    try:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "fc: never fits up to P = 64" in legend
        with pytest.raises(ArgumentError):
            plot_rank_memory_vs_capacity(1000, 8, 4, capacity_gib=-1)
    finally:
        plt.close("all")
