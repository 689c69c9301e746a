"""Lesson 10's figures of one rank's memory: against one GPU's (the smallest world size that fits, its
value written next to it) and against the measurement (one legend entry per head's measured points);
both in the lesson's names for the heads, with plain number tick labels."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from attfc_lite.checks import ArgumentError
from attfc_lite.distributed.per_rank import fitting_world_size, plot_rank_memory, plot_rank_memory_vs_capacity
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
        fc = lines["full FC (model)"]
        assert list(fc.get_xdata()) == [1, 2, 4, 8, 16, 32, 64]
        assert fc.get_ydata()[0] == pytest.approx(predict_memory(n, d, b, head="fc").peak / GiB)
        first = fitting_world_size("fc", n, d, b, 80 * GiB)
        assert f"full FC: fits from P = {first}" in lines
        assert list(lines[f"full FC: fits from P = {first}"].get_xdata()) == [first]
        assert "Partial FC: fits from P = 4" in lines and "AttFC: fits from P = 1" in lines
        assert list(lines["one GPU's memory (80 GiB)"].get_ydata()) == [80, 80]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert set(legend) == {label for label in lines if not label.startswith("_")}
        # each filled point has its value in GiB written next to it (full FC's sits on the card's line)
        texts = {t.get_text(): t.xy for t in ax.texts}
        for head in ("fc", "partial_fc", "attfc"):
            p = fitting_world_size(head, n, d, b, 80 * GiB)
            value = predict_memory(n, d, b, head=head, world_size=p).peak / GiB
            assert texts[f"{value:.1f} GiB"] == (p, pytest.approx(value))
        assert "78.7 GiB" in texts and "22.6 GiB" in texts
        assert_plain_y_ticks(ax)
        # the values the lesson quotes (22.6, 44, 78.7) lie between labelled ticks less than 2x apart
        ticks = sorted(v for v in ax.get_yticks() if ax.get_ylim()[0] <= v <= ax.get_ylim()[1])
        assert all(hi / lo <= 2 for lo, hi in zip(ticks, ticks[1:]))
    finally:
        plt.close(ax.figure)


def assert_plain_y_ticks(ax):
    """Every y tick label, major and minor, is a plain number (no 3x10^1, no mathtext)."""
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    shown = [text for text in labels if text]
    assert shown, "the y axis has no labelled ticks"
    for text in shown:
        assert "$" not in text and "times" not in text and "^" not in text, text
        float(text)


def test_plot_rank_memory_draws_one_measured_entry_per_head_in_the_lessons_names():
    n, d, b = 20_000, 64, 64
    measured = [{"head": head, "world_size": p, "ranks": [{"rank": r, "peak_bytes": peak + r * 2000} for r in range(p)]}
                for head, peak in (("fc", 30 * 2 ** 20), ("attfc", 3.4 * 2 ** 20)) for p in (1, 2)]
    ax = plot_rank_memory(n, d, b, heads=("fc", "attfc"), measured=measured)
    try:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["full FC (model)", "AttFC (model)",
                          "full FC measured (P = 1, 2)", "AttFC measured (P = 1, 2)"]
        lines = {line.get_label(): line for line in ax.get_lines()}
        rings = lines["full FC measured (P = 1, 2)"]
        assert list(rings.get_xdata()) == [1, 2] and rings.get_linestyle() == "None"
        # at each P the largest rank's peak, in MiB
        assert list(rings.get_ydata()) == pytest.approx([30, 30 + 2000 / 2 ** 20])
        assert "MiB" in ax.get_ylabel() and "P" in ax.get_xlabel()
        assert_plain_y_ticks(ax)
        assert ax.get_ylim()[0] < 3  # a labelled tick (3) below AttFC's 3.4 MiB line
    finally:
        plt.close(ax.figure)
    # with FAST = True the lesson measures at one process only; with no measurement, no ring
    one_process = [m for m in measured if m["world_size"] == 1 and m["head"] == "fc"]
    ax = plot_rank_memory(n, d, b, heads=("fc",), measured=one_process)
    try:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["full FC (model)", "full FC measured (P = 1)"]
    finally:
        plt.close(ax.figure)
    ax = plot_rank_memory(n, d, b, heads=("partial_fc",))
    try:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Partial FC (model)"]
    finally:
        plt.close(ax.figure)


def test_a_head_that_never_fits_says_so_in_the_legend():
    ax = plot_rank_memory_vs_capacity(100_000_000, 512, 128, capacity_gib=80, heads=("fc",))
    try:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "full FC: never fits up to P = 64" in legend
        assert not ax.texts  # no point fits, no value written
        with pytest.raises(ArgumentError):
            plot_rank_memory_vs_capacity(1000, 8, 4, capacity_gib=-1)
    finally:
        plt.close("all")
