"""The "will it fit?" callback against hand-computed bytes, and the widget wiring."""
from __future__ import annotations

import pytest

from attfc_lite.widgets import KEY_ENCODER_PARAMS, fit_verdict, verdict_html, will_it_fit_widget

GiB = 2**30
D, B = 512, 128


def fc_peak(n: int, d: int = D, b: int = B, e: int = 4) -> int:
    """W + momentum + batch held, and the centre-gradient phase (5 N x D copies + one B x D)."""
    return 7 * n * d * e + 2 * b * d * e + 8 * b


def largest_fc(capacity: int, d: int = D, b: int = B, e: int = 4) -> int:
    return (capacity - 2 * b * d * e - 8 * b) // (7 * d * e)


def test_small_head_fits():
    r = fit_verdict(1000, D, B, "float32", device_gib=1)
    assert r["peak_bytes"] == fc_peak(1000) == 14_861_312
    assert r["fits"] is True
    assert r["capacity_bytes"] == GiB
    assert r["headroom_bytes"] == GiB - 14_861_312
    assert sum(r["breakdown"].values()) == r["peak_bytes"]
    assert r["max_num_classes"] == largest_fc(GiB)
    assert r["verdict"].startswith("fits")


def test_webface42m_needs_more_than_24_gib_but_fits_80():
    n = 2_059_906
    small = fit_verdict(n, device_gib=24)
    assert small["peak_bytes"] == fc_peak(n)
    assert small["fits"] is False and small["headroom_bytes"] < 0
    assert small["verdict"].startswith("does not fit")
    assert f"{largest_fc(24 * GiB):,}" in small["verdict"]
    big = fit_verdict(n, device_gib=80)
    assert big["fits"] is True and big["headroom_bytes"] == 80 * GiB - fc_peak(n)


def test_half_precision_halves_the_head():
    r = fit_verdict(10_000, dtype="float16", device_gib=24)
    assert r["peak_bytes"] == 7 * 10_000 * D * 2 + 2 * B * D * 2 + 8 * B


def test_bad_device_memory():
    for bad in (0, -1, "24", True):
        with pytest.raises(ValueError, match="device_gib"):
            fit_verdict(1000, device_gib=bad)


def test_verdict_html_has_one_segment_per_visible_term():
    r = fit_verdict(100_000, device_gib=1)
    page = verdict_html(r)
    assert "does not fit" in page
    assert page.count('title="') == sum(1 for v in r["breakdown"].values() if 560 * v / r["peak_bytes"] >= 0.5)


def test_widget_builds_and_follows_its_controls():
    pytest.importorskip("ipywidgets")  # a course extra; the GPU image lacks it
    box = will_it_fit_widget(num_classes=1000, device_gib=24)
    assert box.result["peak_bytes"] == fc_peak(1000) and box.result["fits"]
    box.controls["num_classes"].value = 2_059_906
    assert box.result["peak_bytes"] == fc_peak(2_059_906)
    assert "does not fit" in box.output.value
    box.controls["device_gib"].value = 80.0
    assert box.result["fits"] and box.output.value.count("does not fit") == 0
    preset = next(o for o in box.controls["preset"].options if o.startswith("MS1MV3"))
    box.controls["preset"].value = preset
    assert box.controls["num_classes"].value == 93_431
    box.controls["head"].value = "attfc"
    assert box.result["breakdown"]["key_encoder"] == 4 * KEY_ENCODER_PARAMS


def test_dcc_size_against_the_formulas_and_the_model():
    from attfc_lite.memory import predict_memory
    from attfc_lite.widgets import dcc_size

    r = dcc_size(0.3, 1_000_000, 512, 128)
    assert r["capacity"] == 300_000 and r["container_bytes"] == 300_000 * (4 * 512 + 8)
    assert r["fc_peak_bytes"] == predict_memory(1_000_000, 512, 128).peak
    assert r["attfc_peak_bytes"] == predict_memory(1_000_000, 512, 128, head="attfc", container_size=300_000).peak
    # 300,000 uniform draws over 1,000,000 identities: 1 - e^-0.3 of them present (to 1e-6)
    import math

    assert r["identities_present"] == pytest.approx(1 - math.exp(-0.3), abs=1e-6)
    assert dcc_size(1.0, 1000)["identities_present"] == pytest.approx(1 - (1 - 1 / 1000) ** 1000)
    assert r["accuracy"] is None
    with pytest.raises(ValueError, match="ratio"):
        dcc_size(0.0, 1000)


def test_dcc_size_reads_the_sweep_between_and_at_measured_points():
    from attfc_lite.widgets import dcc_size, interpolate_sweep

    sweep = {"summary": [{"value": 0.01, "accuracy_mean": 0.80}, {"value": 0.1, "accuracy_mean": 0.90},
                         {"value": 1.0, "accuracy_mean": 0.86}]}
    at = interpolate_sweep(sweep, 0.1)
    assert at == {"accuracy": 0.90, "measured": True, "clamped": False, "between": (0.1, 0.1)}
    # halfway in log between 0.01 and 0.1 is 10^-1.5
    mid = interpolate_sweep(sweep, 10 ** -1.5)
    assert mid["accuracy"] == pytest.approx(0.85) and not mid["measured"] and mid["between"] == (0.01, 0.1)
    low = interpolate_sweep(sweep, 0.001)
    assert low["accuracy"] == 0.80 and low["clamped"]
    assert dcc_size(1.0, 2000, sweep=sweep)["accuracy"]["accuracy"] == 0.86
    from attfc_lite.sweep import load_sweep

    stored = load_sweep("dcc_ratio")
    first = stored["summary"][0]
    assert dcc_size(first["value"], 1000, sweep=stored)["accuracy"]["accuracy"] == first["accuracy_mean"]


SWEEP = {"param": "dcc-ratio", "seeds": [0, 1], "device": "cpu (2 cores)", "config": {"num_classes": 1000},
         "summary": [{"value": 0.01, "accuracy_mean": 0.80, "accuracy_seed_std": 0.01},
                     {"value": 0.1, "accuracy_mean": 0.90, "accuracy_seed_std": 0.0},
                     {"value": 1.0, "accuracy_mean": 0.86, "accuracy_seed_std": 0.02}]}


def test_dcc_size_widget_follows_its_controls():
    import matplotlib

    matplotlib.use("Agg")
    from attfc_lite.widgets import dcc_size_widget

    box = dcc_size_widget(ratio=0.1, num_classes=10_000, sweep=SWEEP)
    assert box.result["capacity"] == 1000 and box.result["accuracy"]["measured"]
    box.controls["ratio"].value = 1.0
    assert box.result["capacity"] == 10_000 and box.result["accuracy"]["accuracy"] == 0.86
    box.controls["num_classes"].value = 2_059_906
    assert box.result["num_classes"] == 2_059_906 and box.result["capacity"] == 2_059_906
    # Q x (D floats + one int64 label), D = 512
    assert box.result["container_bytes"] == 2_059_906 * (512 * 4 + 8)
    assert "Q = 2,059,906 entries" in box.children[1].value


def test_dcc_size_text_says_where_the_accuracy_comes_from():
    from attfc_lite.widgets import dcc_size, dcc_size_text

    measured = dcc_size_text(dcc_size(0.1, 5000, sweep=SWEEP))
    assert "0.900 (measured)" in measured and "not at this N" in measured
    between = dcc_size_text(dcc_size(10 ** -1.5, 5000, sweep=SWEEP))
    assert "0.850 (interpolated between the measured ratios 0.01 and 0.1)" in between
    assert "accuracy" not in dcc_size_text(dcc_size(0.1, 5000))
    # 0.3 x 1e6 = 300,000 entries of 512 floats and a label: 616,800,000 bytes = 588.2 MiB
    assert "Q = 300,000 entries, 588.2 MiB" in dcc_size_text(dcc_size(0.3, 1_000_000))


def test_plot_dcc_size_draws_both_heads_and_marks_the_ratio():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.widgets import dcc_size, plot_dcc_size

    result = dcc_size(0.3, 100_000, sweep=SWEEP)
    ax_mem, ax_acc = plot_dcc_size(result, SWEEP)
    assert [t.get_text() for t in ax_mem.get_yticklabels()] == ["full FC", "AttFC, Q = 30,000"]
    star = [line for line in ax_acc.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and star[0].get_xdata()[0] == 0.3
    assert star[0].get_ydata()[0] == pytest.approx(result["accuracy"]["accuracy"])
    plt.close("all")


def test_dcc_size_text_warns_when_the_container_is_smaller_than_the_batch():
    from attfc_lite.widgets import dcc_size, dcc_size_text

    assert "each step keeps only the last 10 of its GCCs" in dcc_size_text(dcc_size(0.01, 1000))  # Q = 10 < B = 128
    assert "smaller than the batch" not in dcc_size_text(dcc_size(0.3, 1000))  # Q = 300
