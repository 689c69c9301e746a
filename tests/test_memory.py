"""The memory model against hand-computed bytes; the measurement against known allocations."""
from __future__ import annotations

import functools
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from attfc_lite.heads import FullFC
from attfc_lite.memory.model import HEAD_PHASES
from attfc_lite.memory import (
    DATASETS,
    GiB,
    MiB,
    OOMBoundary,
    PHASES,
    StepMeasurement,
    TERMS,
    find_oom_boundary,
    measure_head_step,
    memory_report,
    plot_breakdown,
    plot_memory_vs_classes,
    plot_timeline,
    predict_memory,
    predicted_boundary,
)

N, D, B = 1000, 512, 128
W_BYTES = N * D * 4  # 2,048,000


def fc_peak_by_hand(n: int, d: int = 512, b: int = 128, e: int = 4) -> int:
    """W + momentum + inputs held, plus the centre-gradient phase: 5 N x D copies and one B x D."""
    held = 2 * n * d * e + b * d * e + 8 * b
    return held + 5 * n * d * e + b * d * e


def test_fc_terms_by_hand():
    p = predict_memory(N, D, B)
    assert p.terms["class_centres"] == 2_048_000
    assert p.terms["optimizer_state"] == 2_048_000  # one momentum buffer
    assert p.terms["centre_grad"] == 2_048_000
    assert p.terms["inputs"] == 128 * 512 * 4 + 128 * 8 == 263_168
    assert p.terms["normalized_centres"] == 2_048_000 + 2 * 1000 * 4
    assert p.terms["logits"] == 2 * 128 * 1000 * 4 == 1_024_000
    assert p.terms["logit_grads"] == 1_024_000
    assert p.terms["head_temporaries"] == 1_024_000
    assert p.terms["normalize_backward"] == 4 * 2_048_000
    assert p.terms["key_encoder"] == p.terms["container"] == p.terms["key_activations"] == 0
    assert p.held == 2 * 2_048_000 + 263_168
    assert p.phases["forward"] == 2_056_000 + 262_144 + 1_024_000 + 1_024_000
    assert p.phases["backward: centres"] == 2_048_000 + 8_192_000 + 262_144
    assert p.peak_phase == "backward: centres"
    assert p.step_peak == 10_502_144
    assert p.peak == 4_359_168 + 10_502_144 == fc_peak_by_hand(N)
    assert p.as_dict()["peak"] == p.peak
    assert sum(p.peak_terms().values()) == p.peak


def test_every_term_has_formula_and_phase_names_exist():
    for name, (kind, formula, text) in TERMS.items():
        assert kind in ("held", "step") and formula and text, name
    for phases in HEAD_PHASES.values():
        for names in phases.values():
            assert set(names) <= set(TERMS)
    assert PHASES == HEAD_PHASES["fc"]


def test_dtype_and_optimizer_scale_the_terms():
    half = predict_memory(N, D, B, dtype="float16")
    assert half.terms["class_centres"] == N * D * 2
    assert half.terms["logits"] == 2 * B * N * 2
    assert predict_memory(N, D, B, dtype=torch.bfloat16).terms["class_centres"] == N * D * 2
    adam = predict_memory(N, D, B, optimizer="adam")
    assert adam.terms["optimizer_state"] == 2 * W_BYTES
    assert adam.terms["optimizer_temporaries"] == 2 * W_BYTES
    plain = predict_memory(N, D, B, momentum=0.0)
    assert plain.terms["optimizer_state"] == 0
    decay = predict_memory(N, D, B, weight_decay=5e-4)
    assert decay.terms["optimizer_temporaries"] == W_BYTES


def test_logits_dominate_when_batch_exceeds_dim():
    # B > D: four B x N buffers outweigh four extra N x D copies.
    n, d, b = 1000, 128, 1024
    p = predict_memory(n, d, b)
    forward = n * d * 4 + 2 * n * 4 + b * d * 4 + 4 * b * n * 4
    assert p.phases["forward"] == forward
    assert p.peak_phase in ("forward", "backward: logits")
    assert p.step_peak == forward


def test_partial_fc_terms_by_hand():
    n = 100_000
    pfc = predict_memory(n, D, B, head="partial_fc", sample_rate=0.1)
    s = 10_000
    assert pfc.terms["class_centres"] == pfc.terms["centre_grad"] == n * D * 4  # W and W.grad are still N x D
    assert pfc.terms["logits"] == 2 * B * s * 4
    assert pfc.terms["gathered_centres"] == s * D * 4
    assert pfc.terms["normalized_centres"] == s * D * 4 + 2 * s * 4
    # the scatter into a dense W.grad, with the gathered rows' gradient alive: N + S rows
    assert pfc.phases["backward: scatter"] == (n + s) * D * 4 + B * D * 4
    assert pfc.peak_phase == "backward: scatter"
    # at r = 0.5 the normalize backward on the S rows (6 S x D) outweighs N + S rows
    half = predict_memory(n, D, B, head="partial_fc", sample_rate=0.5)
    assert half.phases["backward: centres"] == 6 * 50_000 * D * 4 + 2 * 50_000 * 4 + B * D * 4
    assert half.peak_phase == "backward: centres"
    assert predict_memory(1000, D, B, head="partial_fc", sample_rate=0.01).symbols["S"] == B  # at most B positives


def test_attfc_terms_by_hand():
    att = predict_memory(10_000, D, B, head="attfc", backbone_params=44_000_000, num_keys=2)
    q = 3000  # floor(0.3 N), the head's own rule
    assert att.config["container_size"] == q
    assert att.terms["class_centres"] == att.terms["centre_grad"] == att.terms["optimizer_state"] == 0
    assert att.terms["logits"] == att.terms["logit_grads"] == att.terms["head_temporaries"] == 0
    assert att.terms["container"] == q * (4 * D + 8)
    assert att.terms["inputs"] == 3 * B * D * 4 + 8 * B  # queries and K = 2 keys each
    assert att.terms["key_encoder"] == 4 * 44_000_000
    assert att.terms["container_logits"] == B * q * 4 + B * q  # B*Q bools > B*D floats here
    assert att.phases["forward: container"] == 2 * B * D * 4 + B * q * 4 + B * q
    assert att.phases["forward: attention"] == 4 * B * D * 4
    assert att.phases["backward"] == 5 * B * D * 4
    assert predict_memory(100, D, B, head="attfc").config["container_size"] == 30
    assert predict_memory(10_000, D, B, head="attfc", container_size=77).config["container_size"] == 77


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=1000, embedding_dim=0), "embedding_dim"),
        (dict(num_classes=1000, dtype="int8"), "dtype"),
        (dict(num_classes=1000, head="vfc"), "head"),
        (dict(num_classes=1000, optimizer="lbfgs"), "optimizer"),
        (dict(num_classes=1000, head="partial_fc", sample_rate=0.0), "sample_rate"),
        (dict(num_classes=1.5), "num_classes"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, word):
    with pytest.raises(ValueError, match=word):
        predict_memory(**kwargs)


def test_predicted_boundary_matches_closed_form():
    budget = GiB
    # peak(N) = 7 N D e + 2 B D e + 8 B while the centre-gradient phase is the largest
    expected = (budget - 2 * B * D * 4 - 8 * B) // (7 * D * 4)
    assert predicted_boundary(budget, embedding_dim=D, batch_size=B) == expected
    assert predicted_boundary(10, embedding_dim=D, batch_size=B) == 0
    with pytest.raises(ValueError, match="num_classes"):
        predicted_boundary(budget, num_classes=5)


def test_measured_cpu_step_matches_hand_count():
    n = 2000
    m = measure_head_step(FullFC(D, n), batch_size=B, device="cpu")
    assert m.device == "cpu" and m.steady_state
    assert m.held_bytes == 2 * n * D * 4 + B * D * 4 + B * 8  # W, momentum, embeddings, labels
    assert abs(m.peak_bytes - fc_peak_by_hand(n)) / fc_peak_by_hand(n) < 0.02
    assert m.step_peak_bytes == max(m.timeline_bytes)
    assert set(m.phase_peaks) == {"forward", "backward", "optimizer"}
    assert abs(m.timeline_bytes[-1]) < 64 * 1024  # everything made in the step is freed again
    assert all(a <= b for a, b in zip(m.timeline_ms, m.timeline_ms[1:]))
    assert m.step_seconds is not None and m.step_seconds > 0


class _ExtraBufferHead(FullFC):
    """FullFC whose forward also holds a 10 MB buffer: the measurement must see exactly it."""

    def forward(self, embeddings, labels):
        junk = torch.ones(2_500_000)
        return super().forward(embeddings, labels) + junk.sum() * 0


def test_measurement_sees_a_known_allocation():
    torch.manual_seed(0)
    # The CPU profiler counts bytes exactly; CUDA's allocator would round the buffer to 2 MiB.
    plain = measure_head_step(FullFC(D, 1000), batch_size=B, time_step=False, device="cpu")
    torch.manual_seed(0)
    extra = measure_head_step(_ExtraBufferHead(D, 1000), batch_size=B, time_step=False, device="cpu")
    grown = extra.phase_peaks["forward"] - plain.phase_peaks["forward"]
    assert abs(grown - 10_000_000) < 4096


def test_memory_report_is_json_and_agrees():
    r = memory_report("fc", 2000, D, B)
    text = json.dumps(r)
    assert json.loads(text)["predicted"]["peak"] == fc_peak_by_hand(2000)
    for key in ("predicted", "measured_peak_bytes", "step_seconds", "measured_step_peak_bytes", "formulas"):
        assert key in r
    assert abs(r["relative_error"]) < 0.15
    assert abs(r["measured_peak_bytes"] - fc_peak_by_hand(2000)) / fc_peak_by_hand(2000) < 0.02
    assert memory_report("fc", 2000, measure=False)["measured_peak_bytes"] is None
    with pytest.raises(ValueError, match="num_classes"):
        memory_report("fc")


@pytest.mark.parametrize("head,kwargs,n", [("partial_fc", dict(sample_rate=0.1), 20_000),
                                           ("partial_fc", dict(sample_rate=0.5), 5_000),
                                           ("attfc", dict(container_ratio=0.3, num_keys=2), 50_000),
                                           ("attfc", dict(container_size=100, num_keys=4), 1_000)])
def test_partial_fc_and_attfc_measured_steps_agree_with_the_model(head, kwargs, n):
    r = memory_report(head, n, D, B, device="cpu", **kwargs)
    assert abs(r["relative_error"]) < 0.02 and abs(r["step_relative_error"]) < 0.02, r["predicted_peak_phase"]


def test_report_says_what_is_measured_on_the_cpu():
    r = memory_report("fc", 2000, D, B, device="cpu")
    assert "measured_reserved_peak_bytes" in r and r["measured_reserved_peak_bytes"] is None
    assert "tensor allocations" in r["method"] and "resident" in r["method"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_report_gives_the_reserved_peak_beside_the_allocated_one():
    r = memory_report("fc", 20_000, D, B, device="cuda")
    # reserved (what an out-of-memory is raised against) holds at least what was allocated
    assert r["measured_reserved_peak_bytes"] >= r["measured_peak_bytes"] > 0
    assert "max_memory_reserved" in r["method"]


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU cap uses RLIMIT_AS and /proc")


@linux_only
def test_oom_boundary_cpu():
    budget = 32 * MiB
    expected = (budget - 2 * B * D * 4 - 8 * B) // (7 * D * 4)  # 2,322 identities
    r = find_oom_boundary(budget, "fc", D, B, start=512, rtol=0.1, max_trials=8, warmup_classes=500, timeout_s=120)
    assert isinstance(r, OOMBoundary) and r.child_error is None, r.child_error
    assert r.predicted_boundary == expected
    assert r.largest_fit is not None and r.first_fail is not None
    assert r.largest_fit < r.first_fail
    assert any(not t["fits"] and "allocate" in t["error"] for t in r.trials)
    # the real boundary sits near the hand-computed one
    assert 0.8 * expected <= r.largest_fit and r.first_fail <= 1.25 * expected


@linux_only
def test_oom_boundary_rejects_unpicklable_factory_and_survives_a_crashing_child():
    with pytest.raises(TypeError, match="picklable"):
        find_oom_boundary(MiB, lambda n: FullFC(D, n))
    with pytest.raises(ValueError, match="budget_bytes"):
        find_oom_boundary(0)
    # a factory that fails for another reason than memory: the child dies, this process does not
    r = find_oom_boundary(32 * MiB, functools.partial(FullFC, 0), start=512, max_trials=2, timeout_s=60)
    assert r.child_error is not None and "exit status" in r.child_error
    assert r.largest_fit is None


def test_plot_memory_vs_classes_draws_datasets_devices_and_the_model():
    ax = plot_memory_vs_classes(num_classes=[1000, 10_000], measured={1000: fc_peak_by_hand(1000)})
    xs = [line.get_xdata() for line in ax.lines]
    vertical = [x for x in xs if len(x) == 2 and x[0] == x[1]]
    assert sorted(int(x[0]) for x in vertical) == sorted(DATASETS.values())
    peak_line = ax.lines[0]
    assert peak_line.get_ydata()[0] == pytest.approx(fc_peak_by_hand(1000) / GiB)
    horizontal = sorted(float(line.get_ydata()[0]) for line in ax.lines if list(line.get_ydata()) in ([24, 24], [40, 40], [80, 80]))
    assert horizontal == [24.0, 40.0, 80.0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_plot_breakdown_stacks_to_the_peak():
    bds = {"FC": predict_memory(N, D, B), "FC fp16": predict_memory(N, D, B, dtype="float16")}
    ax = plot_breakdown(bds, unit="B")
    tops = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2)
        tops[x] = max(tops.get(x, 0), patch.get_y() + patch.get_height())
    assert tops[0] == pytest.approx(fc_peak_by_hand(N))
    assert tops[1] == pytest.approx(fc_peak_by_hand(N, e=2))  # half of everything but the int64 labels


def test_plot_timeline_draws_the_running_total():
    m = StepMeasurement(
        device="cpu", method="hand", config=dict(head="toy", num_classes=10, embedding_dim=4, batch_size=2),
        held_bytes=0, step_peak_bytes=3 * MiB, peak_bytes=3 * MiB, phase_peaks={}, step_seconds=None,
        timeline_ms=[1.0, 2.0, 3.0], timeline_bytes=[MiB, 3 * MiB, 0], timeline_phase=["forward", "backward", "optimizer"],
    )
    ax = plot_timeline(m, predict_memory(10, 4, 2))
    assert list(ax.lines[0].get_ydata()) == [0.0, 1.0, 3.0, 0.0]
    assert math.isclose(ax.lines[1].get_ydata()[0], predict_memory(10, 4, 2).step_peak / MiB)
