"""The "will it fit?" callbacks against hand-computed bytes, and the widget wiring."""
from __future__ import annotations

import pytest

from attfc_lite.memory import BACKBONES
from attfc_lite.widgets import (
    KEY_ENCODER_PARAMS,
    dataset_for,
    fit_curve,
    fit_verdict,
    plot_fit_curve,
    resolve_num_classes,
    verdict_html,
    verdict_text,
    will_it_fit_widget,
)

GiB = 2**30
D, B = 512, 128
N42 = 2_059_906  # WebFace42M identities
IR50 = BACKBONES["iresnet50"]  # P parameters; X, I measured bytes per image (test_memory_mixed checks them)
IMAGE = 3 * 112 * 112 * 4  # one fp32 112 x 112 RGB image


def fc_peak(n: int, d: int = D, b: int = B, e: int = 4) -> int:
    """The FC head's step alone: W + momentum + batch held, and the centre-gradient phase (5 N x D copies + one B x D)."""
    return 7 * n * d * e + 2 * b * d * e + 8 * b


def largest_fc(capacity: int, d: int = D, b: int = B, e: int = 4) -> int:
    return (capacity - 2 * b * d * e - 8 * b) // (7 * d * e)


def fc_step_fp32_sgd(n: int, d: int = D, b: int = B) -> int:
    """The whole FC step, fp32, SGD with momentum, iResNet-50: the head's step at its F.normalize
    backward while the backbone's activations of the batch are alive, next to the backbone's
    weights and momentum and the batch of images."""
    return fc_peak(n, d, b) + 8 * IR50.params + b * IMAGE + b * IR50.activation_bytes


# ---------------------------------------------------------------- the head alone (backbone=None)


def test_small_head_fits():
    r = fit_verdict(1000, D, B, "float32", device_gib=1, backbone=None)
    assert r["peak_bytes"] == fc_peak(1000) == 14_861_312
    assert r["fits"] is True
    assert r["capacity_bytes"] == GiB
    assert r["headroom_bytes"] == GiB - 14_861_312
    assert sum(r["breakdown"].values()) == r["peak_bytes"]
    assert r["parts"] == {"head": 14_861_312, "backbone": 0, "key encoder": 0}
    assert r["max_num_classes"] == largest_fc(GiB)
    assert r["verdict"].startswith("fits")
    assert "the head alone" in r["notes"][0]


def test_webface42m_head_alone_needs_more_than_24_gib_but_fits_80():
    small = fit_verdict(N42, device_gib=24, backbone=None)
    assert small["peak_bytes"] == fc_peak(N42)
    assert small["fits"] is False and small["headroom_bytes"] < 0
    assert small["verdict"].startswith("does not fit")
    assert f"{largest_fc(24 * GiB):,}" in small["verdict"]
    big = fit_verdict(N42, device_gib=80, backbone=None)
    assert big["fits"] is True and big["headroom_bytes"] == 80 * GiB - fc_peak(N42)


def test_pure_half_precision_halves_the_head_and_says_it_is_not_training_practice():
    r = fit_verdict(10_000, precision="float16", device_gib=24, backbone=None)  # the old dtype name
    assert r["precision"] == "pure_fp16"
    assert r["peak_bytes"] == 7 * 10_000 * D * 2 + 2 * B * D * 2 + 8 * B
    assert any("not a training recipe" in note for note in r["notes"])
    assert fit_verdict(10_000, dtype="float16", backbone=None)["peak_bytes"] == r["peak_bytes"]


# ---------------------------------------------------------------- the whole step


def test_webface42m_fc_whole_step_fp32_sgd():
    r = fit_verdict("WebFace42M", D, B, "fp32", 24, "fc", "sgd")
    assert r["dataset"] == "WebFace42M" and r["num_classes"] == N42
    assert r["peak_bytes"] == fc_step_fp32_sgd(N42)
    assert r["parts"]["head"] == fc_peak(N42)
    assert r["parts"]["backbone"] == 8 * IR50.params + B * IMAGE + B * IR50.activation_bytes
    assert r["head_only_peak_bytes"] == fc_peak(N42)
    assert not r["fits"]
    # 36.3 GiB: 27.5 GiB of head and 8.8 GiB of backbone (8.4 GiB of it activations)
    assert round(r["peak_bytes"] / GiB, 1) == 36.3 and round(r["parts"]["head"] / GiB, 1) == 27.5
    # where the FC step stops fitting 24 GiB: the largest N with fc_step_fp32_sgd(N) <= 24 GiB
    fixed = fc_step_fp32_sgd(0)
    limit = (24 * GiB - fixed) // (28 * D)
    assert r["max_num_classes"] == r["fc_max_num_classes_24gb"] == limit
    assert fc_step_fp32_sgd(limit) <= 24 * GiB < fc_step_fp32_sgd(limit + 1)
    # the same step fits the 40 and 80 GB cards
    assert fit_verdict(N42, D, B, "fp32", 40)["fits"] and fit_verdict(N42, D, B, "fp32", 80)["fits"]


def test_webface42m_fc_whole_step_mixed_adam():
    r = fit_verdict(N42, D, B, "mixed_bf16", 24, "fc", "adam")
    n, p = N42, IR50.params
    # head: fp32 W and two fp32 Adam moments; the fp32 normalize backward (5 x 4ND), the two
    # fp32 norm vectors [N], fp32 + bf16 normalised embeddings; fp32 embeddings and labels
    head = 12 * n * D + 4 * B * D + 8 * B + 20 * n * D + 8 * n + 6 * B * D
    # backbone: fp32 weights and two moments, its bf16 weight copies, bf16 activations, images
    backbone = 12 * p + 2 * p + B * IR50.mixed_activation_bytes + B * IMAGE
    assert r["parts"] == {"head": head, "backbone": backbone, "key encoder": 0}
    assert r["peak_bytes"] == head + backbone
    assert not r["fits"]
    assert any("does not shrink the FC head" in note for note in r["notes"])


def test_webface42m_attfc_whole_step_fp32_sgd_and_mixed_adam():
    q = 617_971  # 0.3 N, rounded down
    k, p = 2, IR50.params
    # AttFC head: the container (Q fp32 centres + int64 labels), the batch (embeddings, K keys per
    # query, labels); at its peak one B x Q fp32 logit buffer and the B x Q bool mask, the
    # normalised embeddings and GCCs
    head = q * (4 * D + 8) + (1 + k) * B * D * 4 + 8 * B + B * q * 4 + B * q + 2 * B * D * 4
    key_encoder = 4 * p
    images = (1 + k) * B * IMAGE
    r = fit_verdict(N42, D, B, "fp32", 24, "attfc", "sgd")
    assert r["container_size"] == q
    assert r["parts"] == {"head": head, "backbone": 8 * p + images + B * IR50.activation_bytes,
                          "key encoder": key_encoder}
    assert r["fits"] and round(r["peak_bytes"] / GiB, 1) == 10.5
    assert any("still grows with N through Q" in note for note in r["notes"])
    mixed = fit_verdict(N42, D, B, "mixed_fp16", 24, "attfc", "adam")
    assert mixed["parts"] == {"head": head, "backbone": 14 * p + images + B * IR50.mixed_activation_bytes,
                              "key encoder": key_encoder}
    assert mixed["fits"] and round(mixed["peak_bytes"] / GiB, 1) == 6.6
    # the key encoder's no_grad forward on K*B key images is a phase of its own, below the peak
    assert k * B * IR50.mixed_inference_bytes < mixed["peak_bytes"]


def test_attfc_fixed_container_stops_the_growth_with_n():
    a = fit_verdict(1_000_000, head="attfc", container_size=50_000)
    b = fit_verdict(10_000_000, head="attfc", container_size=50_000)
    assert a["peak_bytes"] == b["peak_bytes"] and a["container_size"] == 50_000
    assert a["max_num_classes"] is None and "any number of identities" in a["verdict"]
    assert any("no longer depends on N" in note for note in a["notes"])
    grows = fit_verdict(10_000_000, head="attfc")
    assert grows["container_size"] == 3_000_000 and grows["peak_bytes"] > b["peak_bytes"]


def test_key_encoder_constant_is_insightfaces_iresnet50():
    assert KEY_ENCODER_PARAMS == IR50.params and abs(KEY_ENCODER_PARAMS - 43.6e6) < 0.1e6


# ---------------------------------------------------------------- the menu, bad input, text


def test_dataset_menu_follows_a_typed_n():
    assert dataset_for(93_431) == "MS1MV3" and dataset_for(2_059_906) == "WebFace42M"
    assert dataset_for(93_432) == "custom" and dataset_for(10_000_000) == "custom"
    assert resolve_num_classes("MS1MV3") == 93_431


@pytest.mark.parametrize("call,match", [
    (lambda: fit_verdict(-5), r"num_classes must be a whole number of identities >= 2"),
    (lambda: fit_verdict(1.5), r"num_classes must be a whole number"),
    (lambda: fit_verdict("WebFace100M"), r"num_classes must be .* or a dataset name of \[.*MS1MV3.*got 'WebFace100M'"),
    (lambda: fit_verdict(1000, optimizer="rmsprop"), r"optimizer must be one of .*got 'rmsprop'"),
    (lambda: fit_verdict(1000, precision="fp8"), r"precision must be one of .*mixed_fp16"),
    (lambda: fit_verdict(1000, backbone="vit"), r"backbone must be one of .*or None"),
    (lambda: fit_verdict(1000, head="arcface"), r"head must be one of"),
    (lambda: fit_curve(precision="half"), r"precision must be one of"),
])
def test_bad_input_names_the_argument_and_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_device_memory():
    for bad in (0, -1, True, float("nan"), float("inf"), "24 GB", None, 1e-12):
        with pytest.raises(ValueError, match="device_gib"):
            fit_verdict(1000, device_gib=bad)
    # a number written as text is the number, as on the command line
    assert fit_verdict(1000, device_gib="24", backbone=None)["capacity_bytes"] == 24 * GiB


def test_verdict_html_has_one_segment_per_visible_term():
    r = fit_verdict(100_000, device_gib=1)
    page = verdict_html(r)
    assert "does not fit" in page
    assert page.count('title="') == sum(1 for v in r["breakdown"].values() if 560 * v / r["peak_bytes"] >= 0.5)
    assert "<b>head</b>" in page and "<b>backbone</b>" in page


def test_verdict_text_shows_the_parts():
    text = verdict_text(fit_verdict(N42, D, B, "mixed_bf16", 24, "fc", "adam"))
    assert "WebFace42M: N = 2,059,906" in text and "Adam (two fp32 state buffers)" in text
    assert "peak of the step: head 31.4 GiB + backbone 4.8 GiB = 36.3 GiB" in text
    assert "stops fitting a 24 GB card above N = " in text


# ---------------------------------------------------------------- the plot


def test_fit_curve_and_its_plot():
    import matplotlib.pyplot as plt

    curve = fit_curve(points=12)
    assert curve["num_classes"][0] == 10_000 and curve["num_classes"][-1] == 10_000_000
    assert curve["fc_head_bytes"][-1] == fc_peak(10_000_000)
    assert curve["total_bytes"]["full FC"][-1] == fc_step_fp32_sgd(10_000_000)
    assert curve["fc_limit_24gb"] == fit_verdict(N42)["fc_max_num_classes_24gb"]
    result = fit_verdict(N42)
    ax = plot_fit_curve(curve, result)
    assert ax.get_title() and "GiB" in ax.get_ylabel() and "identities N" in ax.get_xlabel()
    lines = ax.get_lines()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == len(lines) == 3 + 1 + 3 + 1 + 1  # heads, FC head alone, cards, FC limit, this point
    assert all(not line.get_label().startswith("_") for line in lines)
    assert any("24 GB card (24 GiB)" in label for label in labels)
    star = [line for line in lines if line.get_marker() == "*"][0]
    assert star.get_ydata()[0] == pytest.approx(result["peak_bytes"] / GiB)
    plt.close("all")


# ---------------------------------------------------------------- the widget


def test_widget_builds_and_follows_its_controls():
    pytest.importorskip("ipywidgets")  # a course extra; the GPU image lacks it
    box = will_it_fit_widget(num_classes=1000, device_gib=24, backbone=None, plot=False)
    assert box.result["peak_bytes"] == fc_peak(1000) and box.result["fits"]
    assert box.controls["preset"].value == "custom"
    box.controls["num_classes"].value = N42
    assert box.controls["preset"].value == "WebFace42M"  # the menu follows a typed N
    assert box.result["peak_bytes"] == fc_peak(N42)
    assert "does not fit" in box.output.value
    box.controls["backbone"].value = "iresnet50"
    assert box.result["peak_bytes"] == fc_step_fp32_sgd(N42)
    box.controls["device_gib"].value = 80.0
    assert box.result["fits"] and box.output.value.count("does not fit") == 0
    box.controls["num_classes"].value = 93_431
    assert box.controls["preset"].value == "MS1MV3"
    box.controls["num_classes"].value = 93_000
    assert box.controls["preset"].value == "custom"
    box.controls["preset"].value = "WebFace4M"
    assert box.controls["num_classes"].value == 205_990 and box.result["num_classes"] == 205_990
    box.controls["num_classes"].value = 10_000_000  # the largest N the widget takes
    assert box.result["num_classes"] == 10_000_000
    box.controls["optimizer"].value = "adam"
    assert box.result["optimizer"] == "adam"
    box.controls["precision"].value = "mixed_fp16"
    assert box.result["precision"] == "mixed_fp16"
    box.controls["head"].value = "attfc"
    assert box.result["breakdown"]["key_encoder_weights"] == 4 * KEY_ENCODER_PARAMS
    assert box.result["container_size"] == 3_000_000
    box.controls["container_size"].value = 65_536
    box.controls["container"].value = "fixed"
    assert box.result["container_size"] == 65_536 and box.result["max_num_classes"] is None


def test_widget_draws_the_plot():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    box = will_it_fit_widget(num_classes=N42, embedding_dim=D, batch_size=B, device_gib=24)
    assert box.result == fit_verdict(N42, D, B, "float32", 24.0)  # what lesson 02 checks
    assert box.curve["settings"]["precision"] == "fp32"
    box.controls["precision"].value = "mixed_bf16"
    assert box.curve["settings"]["precision"] == "mixed_bf16"
    plt.close("all")


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
    assert dcc_size(1.0, 2000, sweep={"param": "dcc-ratio", **sweep})["accuracy"]["accuracy"] == 0.86
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


def test_plot_dcc_size_has_titles_axis_labels_and_legends():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.widgets import dcc_size, plot_dcc_size

    result = dcc_size(0.3, 100_000, sweep=SWEEP)
    ax_mem, ax_acc = plot_dcc_size(result, SWEEP)
    for ax in (ax_mem, ax_acc):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend().get_texts()
    assert "GiB" in ax_mem.get_xlabel() and ax_mem.get_xlim()[0] == 0  # the bars start at 0
    assert ax_acc.get_xscale() == "log" and "log scale" in ax_acc.get_xlabel()
    texts = [t.get_text() for t in ax_acc.get_legend().get_texts()]
    assert len(texts) == 3 and any("± std" in t for t in texts)  # measured with error bars, interpolated, this ratio
    ax = plot_dcc_size(dcc_size(0.3, 100_000))  # no sweep: the memory panel alone
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend().get_texts()
    plt.close("all")


# ---------------------------------------------------------------- every argument checked where it enters


def _widget_bad_calls():
    from attfc_lite.widgets import dcc_size, dcc_size_text, interpolate_sweep, plot_dcc_size

    nan = float("nan")
    good = {"summary": [{"value": 0.1, "accuracy_mean": 0.9}]}
    cases = [
        (lambda: resolve_num_classes(10.7), "num_classes"),
        (lambda: resolve_num_classes(nan), "num_classes"),
        (lambda: resolve_num_classes(None), "num_classes"),
        (lambda: fit_verdict(1000, embedding_dim=10.7), "embedding_dim"),
        (lambda: fit_verdict(1000, batch_size=0), "batch_size"),
        (lambda: fit_verdict(1000, head="attfc", container_size=0.5), "container_size"),
        (lambda: fit_verdict(1000, precision=5), "precision"),
        (lambda: fit_verdict(1000, optimizer=None), "optimizer"),
        (lambda: fit_verdict(1000, backbone=3), "backbone"),
        (lambda: fit_verdict(1000, momentum=nan), "momentum"),
        (lambda: fit_verdict(1000, head="partial_fc", sample_rate=2.0), "sample_rate"),
        (lambda: fit_curve(points=1), "points"),
        (lambda: fit_curve(points=2.5), "points"),
        (lambda: fit_curve(max_num_classes=10_000), "max_num_classes"),
        (lambda: fit_curve(max_num_classes="MS1MV4"), "max_num_classes"),
        (lambda: fit_curve(backbone="vit"), "backbone"),
        (lambda: fit_curve(container_size=-3), "container_size"),
        (lambda: verdict_text({}), "result"),
        (lambda: verdict_html(fit_verdict(1000, backbone=None), width_px=0), "width_px"),
        (lambda: plot_fit_curve({"num_classes": []}), "curve"),
        (lambda: interpolate_sweep(good, nan), "value"),
        (lambda: interpolate_sweep(good, 0.0), "value"),
        (lambda: interpolate_sweep(None, 0.1), "sweep"),
        (lambda: dcc_size(nan, 1000), "ratio"),
        (lambda: dcc_size(1.5, 1000), "ratio"),
        (lambda: dcc_size(0.3, 10.7), "num_classes"),
        (lambda: dcc_size(0.3, 1000, embedding_dim=0), "embedding_dim"),
        (lambda: dcc_size(0.3, 1000, batch_size=2.5), "batch_size"),
        (lambda: dcc_size_text({"ratio": 0.3}), "result"),
        (lambda: plot_dcc_size([]), "result"),
    ]
    return [pytest.param(call, name, id=f"{i}-{name}") for i, (call, name) in enumerate(cases)]


@pytest.mark.parametrize("call,name", _widget_bad_calls())
def test_a_callback_refuses_a_meaningless_value_naming_it(call, name):
    from attfc_lite.checks import ArgumentError

    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, ArgumentError) and info.value.name == name, info.value
    assert str(info.value).startswith(name)


def test_callbacks_take_whole_numbers_written_as_floats_or_text():
    from attfc_lite.widgets import dcc_size, interpolate_sweep

    assert resolve_num_classes(1e6) == resolve_num_classes("1e6") == 1_000_000
    assert fit_verdict(1e3, 512.0, 128.0, backbone=None)["peak_bytes"] == fc_peak(1000)
    curve = fit_curve(points=2.0, max_num_classes=1e5, backbone=None)
    assert curve["num_classes"] == [10_000, 100_000] and curve["fc_head_bytes"][-1] == fc_peak(100_000)
    assert fit_curve(points=2, max_num_classes="MS1MV3", backbone=None)["num_classes"][-1] == 93_431
    assert dcc_size(0.5, 2e3)["capacity"] == 1000
    assert interpolate_sweep({"summary": [{"value": 0.1, "accuracy_mean": 0.9}]}, 0.1)["accuracy"] == 0.9


def test_dcc_size_text_gives_the_dimension_and_batch_it_was_computed_with():
    from attfc_lite.widgets import dcc_size, dcc_size_text

    # Q = 0.5 x 2000 = 1000 entries of 128 floats and a label: 1000 x 520 bytes = 507.8 KiB
    text = dcc_size_text(dcc_size(0.5, 2000, embedding_dim=128, batch_size=64))
    assert "Q = 1,000 entries, 507.8 KiB" in text
    assert "(D = 128, B = 64, fp32, SGD)" in text
    assert "(D = 512, B = 128, fp32, SGD)" in dcc_size_text(dcc_size(0.3, 1000))


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_classes=20_000_000), "num_classes"),  # above the N box's maximum
    (dict(embedding_dim=300), "embedding_dim"),  # not in the D menu
    (dict(batch_size=8), "batch_size"),  # below the slider
    (dict(device_gib=20), "device_gib"),  # not a card of the menu
    (dict(optimizer="adamw"), "optimizer"),  # the menu has SGD and Adam
    (dict(head="cosface"), "head"),
    (dict(backbone="vit"), "backbone"),
    (dict(container_size=0), "container_size"),
    (dict(precision="fp8"), "precision"),
    (dict(plot="yes"), "plot"),
])
def test_will_it_fit_widget_refuses_a_start_outside_its_controls(kwargs, name):
    pytest.importorskip("ipywidgets")
    from attfc_lite.checks import ArgumentError

    with pytest.raises(ArgumentError) as info:
        will_it_fit_widget(**kwargs)
    assert info.value.name == name


def test_will_it_fit_widget_takes_a_whole_float_start():
    pytest.importorskip("ipywidgets")
    box = will_it_fit_widget(num_classes=1e6, embedding_dim=512.0, device_gib=24, backbone=None, plot=False)
    assert box.controls["num_classes"].value == 1_000_000 and box.result["peak_bytes"] == fc_peak(10 ** 6)


@pytest.mark.parametrize("kwargs,name", [(dict(ratio=0.001), "ratio"), (dict(ratio=float("nan")), "ratio"),
                                         (dict(num_classes=10), "num_classes"),
                                         (dict(num_classes=10 ** 8), "num_classes"),
                                         (dict(sweep=5), "sweep")])
def test_dcc_size_widget_refuses_a_start_outside_its_sliders(kwargs, name):
    pytest.importorskip("ipywidgets")
    from attfc_lite.checks import ArgumentError
    from attfc_lite.widgets import dcc_size_widget

    with pytest.raises(ArgumentError) as info:
        dcc_size_widget(**{"sweep": None, **kwargs})
    assert info.value.name == name


# ---------------------------------------------------------------- options of another head, names, sweeps


@pytest.mark.parametrize("head,kwargs,name,owner", [
    ("fc", dict(container_size=5), "container_size", "attfc"),
    ("partial_fc", dict(container_size=5), "container_size", "attfc"),
    ("fc", dict(container_ratio=0.1), "container_ratio", "attfc"),
    ("partial_fc", dict(num_keys=3), "num_keys", "attfc"),
    ("attfc", dict(sample_rate=0.2), "sample_rate", "partial_fc"),
    ("fc", dict(sample_rate=0.2), "sample_rate", "partial_fc"),
])
def test_fit_verdict_refuses_an_option_of_another_head(head, kwargs, name, owner):
    from attfc_lite.checks import ArgumentError

    with pytest.raises(ArgumentError) as info:
        fit_verdict(1000, head=head, backbone=None, **kwargs)
    assert info.value.name == name and str(info.value).startswith(name)
    assert f"head={owner!r}" in str(info.value) and f"head={head!r}" in str(info.value)
    # with its own head the option is taken
    assert fit_verdict(1000, head=owner, backbone=None, **kwargs)["head"] == owner


def test_fit_verdict_options_of_its_head_change_the_peak():
    # Q = 5 fixed entries against Q = 0.3 x 100,000: the container and B x Q logits shrink
    fixed = fit_verdict(100_000, head="attfc", container_size=5, backbone=None)
    assert fixed["container_size"] == 5
    assert fixed["peak_bytes"] < fit_verdict(100_000, head="attfc", backbone=None)["peak_bytes"]
    # the FC head with no container_size is the FC head: container_size=None is the default, not an option
    assert fit_verdict(1000, head="fc", container_size=None, backbone=None)["peak_bytes"] == fc_peak(1000)


def test_fit_verdict_names_an_unknown_keyword_and_itself():
    with pytest.raises(TypeError) as info:
        fit_verdict(1000, backbone=None, containr_size=5)
    text = str(info.value)
    assert "fit_verdict" in text and "'containr_size'" in text and "predict_training_step" not in text
    assert fit_verdict(1000, backbone=None, momentum=0.0)["peak_bytes"] < fc_peak(1000)  # a keyword it takes


@pytest.mark.parametrize("name", ["webface42m", "WEBFACE42M", " WebFace42M "])
def test_dataset_names_are_taken_in_any_case(name):
    assert resolve_num_classes(name) == N42
    assert fit_verdict(name, backbone=None)["peak_bytes"] == fc_peak(N42)
    assert fit_curve(points=2, max_num_classes=name.lower(), backbone=None)["num_classes"][-1] == N42


def test_dcc_size_takes_a_dataset_name_as_fit_verdict_does():
    from attfc_lite.widgets import dcc_size

    r = dcc_size(0.3, "WebFace42M")
    assert r["num_classes"] == N42 and r["capacity"] == int(0.3 * N42) == 617_971
    assert dcc_size(0.3, "ms1mv3")["num_classes"] == 93_431
    with pytest.raises(ValueError) as info:
        dcc_size(0.3, "WebFace100M")
    assert getattr(info.value, "name", None) == "num_classes" and "WebFace42M" in str(info.value)


def test_dcc_size_refuses_a_stored_sweep_of_another_setting():
    from attfc_lite.checks import ArgumentError
    from attfc_lite.sweep import load_sweep
    from attfc_lite.widgets import dcc_size, plot_dcc_size

    k_sweep = load_sweep("k")  # data/sweeps/k.json: accuracy against K, not against the ratio
    assert k_sweep["param"] == "k"
    for call in (lambda: dcc_size(0.3, 1000, sweep=k_sweep),
                 lambda: plot_dcc_size(dcc_size(0.3, 1000), k_sweep),
                 lambda: dcc_size(0.3, 1000, sweep={key: v for key, v in SWEEP.items() if key != "param"})):
        with pytest.raises(ArgumentError) as info:
            call()
        assert info.value.name == "sweep" and "'dcc-ratio'" in str(info.value)
    assert "'k'" in str(pytest.raises(ArgumentError, dcc_size, 0.3, 1000, sweep=k_sweep).value)
    stored = load_sweep("dcc_ratio")
    first = stored["summary"][0]
    got = dcc_size(first["value"], 1000, sweep=stored)["accuracy"]
    assert got["measured"] is True and got["accuracy"] == first["accuracy_mean"]


def test_dcc_size_widget_refuses_a_sweep_of_another_setting_and_takes_a_dataset_name():
    pytest.importorskip("ipywidgets")
    from attfc_lite.checks import ArgumentError
    from attfc_lite.widgets import dcc_size_widget

    with pytest.raises(ArgumentError) as info:
        dcc_size_widget(sweep="k")
    assert info.value.name == "sweep"
    box = dcc_size_widget(num_classes="webface4m", sweep=None)
    assert box.result["num_classes"] == 205_990


def test_will_it_fit_widget_gives_the_fixed_container_to_attfc_only():
    pytest.importorskip("ipywidgets")
    box = will_it_fit_widget(num_classes=100_000, head="attfc", container_size=5, device_gib=24, backbone=None,
                             plot=False)
    assert box.controls["container"].value == "fixed" and box.result["container_size"] == 5
    box.controls["head"].value = "fc"  # the fixed Q stays in its box, but is not AttFC's any more
    assert box.result["head"] == "fc" and box.result["peak_bytes"] == fc_peak(100_000)
    box.controls["head"].value = "attfc"
    assert box.result["container_size"] == 5
