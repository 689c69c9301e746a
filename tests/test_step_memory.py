"""Memory of a whole training step (backbone, head, optimizer, encoder_k) against counts by hand."""
from __future__ import annotations

import pytest
import torch

from attfc_lite.memory.step import measure_model_step, plot_step_timelines, thin_timeline
from attfc_lite.train import TrainConfig

TINY = dict(num_classes=50, embedding_dim=16, batch_size=8, image_size=16, device="cpu")


def numel_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@pytest.fixture(scope="module")
def steps():
    return {head: measure_model_step(TrainConfig(head=head, container_size=20, num_keys=3, **TINY))
            for head in ("fc", "attfc")}


def test_held_parts_match_counts_by_hand(steps):
    from attfc_lite.backbones import make_backbone

    backbone = make_backbone("small", 16, 16)
    params = sum(p.numel() for p in backbone.parameters())
    fc, att = steps["fc"], steps["attfc"]
    assert fc["parts"]["backbone"] == att["parts"]["backbone"] == numel_bytes(backbone)
    # SGD with momentum keeps one buffer per parameter: the backbone's and, for FC, W's (50 x 16)
    assert fc["parts"]["optimizer_state"] == 4 * (params + 50 * 16)
    assert att["parts"]["optimizer_state"] == 4 * params  # AttFC's head has no parameters
    assert fc["parts"]["head"] == 4 * 50 * 16 and fc["parts"]["encoder_k"] == 0
    # encoder_k is a full copy of the backbone (weights and BatchNorm buffers)
    assert att["parts"]["encoder_k"] == numel_bytes(backbone)
    # the container: 20 centres of 16 floats, 20 int64 labels, an int64 pointer
    assert att["parts"]["head"] == 20 * 16 * 4 + 20 * 8 + 8
    # the batch: 8 images of 3 x 16 x 16 floats and 8 int64 labels; AttFC adds 3 key images per query
    assert fc["parts"]["batch"] == 8 * 3 * 16 * 16 * 4 + 8 * 8
    assert att["parts"]["batch"] == fc["parts"]["batch"] + 24 * 3 * 16 * 16 * 4
    for step in steps.values():
        assert step["held_bytes"] == sum(step["parts"].values())
        assert step["peak_bytes"] == step["held_bytes"] + step["step_peak_bytes"]


def test_phases_and_timeline(steps):
    fc, att = steps["fc"], steps["attfc"]
    assert set(fc["phase_peaks"]) == {"forward", "backward", "optimizer"}
    assert set(att["phase_peaks"]) == {"keys", "forward", "backward", "optimizer"}
    for step in steps.values():
        assert max(step["timeline_bytes"]) == step["step_peak_bytes"] > 0
        assert step["timeline_ms"] == sorted(step["timeline_ms"])
        # the activations kept for backward are freed by the end: the step ends near where it began
        assert abs(step["timeline_bytes"][-1]) < 0.1 * step["step_peak_bytes"]


def test_thin_timeline_keeps_each_phase_peak_and_plot_draws(steps):
    import matplotlib.pyplot as plt

    att = steps["attfc"]
    thin = thin_timeline(att, points=20)
    assert len(thin["timeline_ms"]) < len(att["timeline_ms"])
    assert max(thin["timeline_bytes"]) == att["step_peak_bytes"]
    for phase in att["phase_peaks"]:
        values = [v for v, p in zip(att["timeline_bytes"], att["timeline_phase"]) if p == phase]
        assert max(v for v, p in zip(thin["timeline_bytes"], thin["timeline_phase"]) if p == phase) == max(values)
    ax = plot_step_timelines({"FC": steps["fc"], "AttFC": thin})
    assert len(ax.get_legend().get_texts()) == 3  # two heads and the dotted held line
    plt.close("all")


def test_amp_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="amp"):
        measure_model_step(TrainConfig(**TINY), amp=True)



def test_plot_step_timelines_labels_its_axes_in_the_unit_and_starts_at_zero():
    import matplotlib.pyplot as plt

    MiB = 2 ** 20
    step = {"timeline_ms": [1.0, 2.0, 4.0], "timeline_bytes": [2 * MiB, 5 * MiB, 0], "held_bytes": 100 * MiB,
            "peak_bytes": 105 * MiB}
    ax = plot_step_timelines({"FC": step, "AttFC": {**step, "held_bytes": 90 * MiB, "peak_bytes": 95 * MiB}})
    assert ax.get_title() and ax.get_xlabel() and "(MiB)" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["FC: peak 105.0 MiB", "AttFC: peak 95.0 MiB", "dotted: held between steps"]
    assert ax.get_ylim()[0] == 0  # the held memory is not cut off: peaks compare at their true sizes
    ax = plot_step_timelines({"FC": step}, unit="GiB")
    assert "(GiB)" in ax.get_ylabel() and "GiB" in ax.get_legend().get_texts()[0].get_text()
    plt.close("all")
