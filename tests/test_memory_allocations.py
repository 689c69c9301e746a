"""The allocation table of one FC step against a count by hand, and the plots' labelling.

The hand count below is derived from the FC head's code (heads.FullFC, margins.ArcFace) and
from the derivative of each op as autograd computes it; it is written out once, independently
of the profiler, and the table must find exactly these allocations.

Forward, with N=1000 identities, D=64, B=32, float32 (e=4 bytes):

    F.normalize(W) = W / clamp_min(||W||, eps).expand_as(W)    1 N x D (the div); 2 N x 1
    F.linear(x_n, W_n)                                          1 B x N (mm: the cosines)
    .clamp(-1, 1)                                               1 B x N
    ArcFace: cosine.clone(), then out-of-place index_put        2 B x N (clone, index_put's clone)
    logits * s                                                  1 B x N
    cross_entropy: log_softmax                                  1 B x N
                                                                = 1 N x D, 6 B x N

Backward:

    NllLossBackward0, LogSoftmaxBackward0, MulBackward0 (* s)   3 B x N
    IndexPutBackward0: grad.index_put(indices, 0) (a clone)    1 B x N
    IndexBackward0 (cosine[rows, cols]): new_zeros(B, N)        1 B x N (the clone's gradient is
                                                                  added into it in place)
    ClampBackward1: where(lo < c < hi, grad, 0)                 1 B x N, and 2 bool B x N masks
    MmBackward0: grad of W_n = grad_cos^T @ x_n                 1 N x D
    DivBackward0 (W / n): self: grad / n                        1 N x D
                          other: -grad * ((W / n) / n)          4 N x D (W/n, /n, -grad, product)
    ExpandBackward0: sum back to N x 1                          0 N x D
    LinalgVectorNormBackward0 (p=2): grad * (W / ||W||)         2 N x D (the division, the product)
    AccumulateGrad: the two gradients of W summed in place      0 (W.grad is DivBackward0's grad / n)
                                                                = 8 N x D, 6 B x N (+ 2 bool)

Optimizer: SGD with momentum and no weight decay updates the momentum and W in place: 0.

Alive together at most: 5 N x D (MmBackward0's gradient and DivBackward0's four temporaries
of the denominator's path; W.grad is made just after) and 4 B x N (forward: cosines, clamp,
clone, index_put; backward: cosines, log_softmax, and the two gradients of the loss's end).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from attfc_lite.heads import FullFC
from attfc_lite.memory import (
    AllocationTable,
    DATASETS,
    MiB,
    StepMeasurement,
    allocation_table,
    measure_head_step,
    plot_breakdown,
    plot_memory_vs_classes,
    plot_timeline,
    predict_memory,
    symbolic_shape,
)
from attfc_lite.memory.model import HEAD_PHASES

N, D, B, E = 1000, 64, 32, 4
ND, BN = N * D * E, B * N * E

# (phase of the model, count) of every N x D and fp32 B x N allocation, from the count above
HAND_ND = {"forward": 1, "backward: centres": 1 + 1 + 4 + 2}
HAND_BN = {"forward": 6, "backward: logits": 3 + 1 + 1 + 1}


@pytest.fixture(scope="module")
def table() -> AllocationTable:
    return allocation_table("fc", N, D, B, dtype="float32", optimizer="sgd", momentum=0.9)


def _by_phase(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.model_phase] = out.get(r.model_phase, 0) + 1
    return out


def test_n_x_d_and_b_x_n_allocations_match_the_hand_count(table):
    nd = [r for r in table.rows if r.nbytes == ND]
    bn = [r for r in table.rows if r.nbytes == BN]
    assert _by_phase(nd) == HAND_ND
    assert _by_phase(bn) == HAND_BN
    # the sizes name the shapes: every N*D*e allocation is an N x D float32 tensor, and so on
    assert {(r.symbolic, r.dtype) for r in nd} == {("N x D", "float32")}
    assert {(r.symbolic, r.dtype) for r in bn} == {("B x N", "float32")}
    masks = [r for r in table.rows if r.symbolic == "B x N" and r.dtype == "bool"]
    assert len(masks) == 2 and {r.node for r in masks} == {"ClampBackward1"}
    assert not table.select(phase="optimizer", nbytes=ND)  # SGD with momentum: in place
    assert table.max_alive("N x D") == 5
    assert table.max_alive("B x N", "float32") == 4


def test_rows_name_their_ops_and_phases(table):
    nd = [r for r in table.rows if r.symbolic == "N x D"]
    made = [(r.node, r.kernel) for r in nd]
    assert made == [("", "aten::div"), ("MmBackward0", "aten::mm")] + [
        ("DivBackward0", k) for k in ("aten::div", "aten::div", "aten::neg", "aten::mul", "aten::div")] + [
        ("LinalgVectorNormBackward0", "aten::div"), ("LinalgVectorNormBackward0", "aten::mul")]
    assert [r.phase for r in nd] == ["forward"] + ["backward"] * 8
    # normalize(W) is saved for the mm's backward and freed by it
    assert nd[0].freed_in == "MmBackward0" and nd[0].freed_model_phase == "backward: centres"
    # the last gradient of DivBackward0 (grad / n) becomes W.grad: alive until zero_grad
    w_grad = nd[6]
    assert w_grad.freed_phase == "optimizer" and "zero_grad" in w_grad.freed_in
    assert all(r.freed_phase == "backward" for r in nd if r is not w_grad)
    bn = [r for r in table.rows if r.symbolic == "B x N" and r.dtype == "float32"]
    assert [r.phase for r in bn] == ["forward"] * 6 + ["backward"] * 6
    assert bn[0].op == "aten::linear" and bn[0].kernel == "aten::mm"
    # model phases in the order of the step, each row made in the phase it is listed in
    order = list(HEAD_PHASES["fc"])
    seen = [order.index(r.model_phase) for r in table.rows if r.model_phase in order]
    assert seen == sorted(seen)


def test_the_peak_is_five_n_x_d_without_w_grad(table):
    live = table.live_at(table.peak_event)
    assert table.peak_phase() == "backward: centres"
    assert sum(1 for r in live if r.symbolic == "N x D") == 5
    assert not any(r.symbolic == "B x N" for r in live)
    assert sum(r.nbytes for r in live) == table.step_peak_bytes == max(ev[2] for ev in table.events)
    nd = [r for r in table.rows if r.symbolic == "N x D"]
    assert not nd[6].live_at_peak  # W.grad is made after the peak
    assert {r.index for r in live if r.symbolic == "N x D"} == {r.index for r in nd[1:6]}


def test_after_the_peak_two_climbs_to_three_n_x_d(table):
    """After the spike: 3 N x D twice, then W.grad alone until zero_grad."""
    counts, now = [], 0
    for k, (_, size, _, row) in enumerate(table.events):
        if row is None or table.rows[row].symbolic != "N x D":
            continue
        now += 1 if size > 0 else -1
        if k >= table.peak_event and (not counts or counts[-1] != now):
            counts.append(now)
    assert counts == [5, 4, 3, 2, 3, 2, 1, 2, 3, 2, 1, 0]
    nd = [r for r in table.rows if r.symbolic == "N x D"]
    first = {(r.node, r.kernel) for r in table.live_at(nd[6].alloc_event) if r.symbolic == "N x D"}
    assert first == {("MmBackward0", "aten::mm"), ("DivBackward0", "aten::mul"), ("DivBackward0", "aten::div")}
    second = [r for r in table.live_at(nd[8].alloc_event) if r.symbolic == "N x D"]
    assert {r.index for r in second} == {nd[6].index, nd[7].index, nd[8].index}


def test_the_plateau_above_the_logits_phase_is_the_mm_backward():
    """While MmBackward0 forms the gradient of normalize(W), normalize(W) and the B x N
    gradient of the cosines are still alive: 2 N x D + 1 B x N. With the lesson's D = 512 and
    B = 128 (D > 3 B) that is above the logits phases, N x D + 4 B x N."""
    n, d, b = 3000, 512, 128
    big = allocation_table("fc", n, d, b, min_bytes=b * d * 4)
    mm = next(r for r in big.rows if r.symbolic == "N x D" and r.node == "MmBackward0")
    live = big.live_at(mm.alloc_event)
    assert sorted(r.symbolic for r in live if r.nbytes >= b * n * 4) == ["B x N", "N x D", "N x D"]
    level = big.events[mm.alloc_event][2]
    assert abs(level - (2 * n * d * 4 + b * n * 4 + b * d * 4)) < 64 * 1024
    pred = predict_memory(n, d, b)
    assert pred.phases["backward: logits"] < level < pred.step_peak
    assert mm.model_phase == "backward: centres"


def test_table_agrees_with_the_step_the_lesson_measures(table):
    m = measure_head_step(FullFC(D, N), batch_size=B, device="cpu", time_step=False)
    assert table.step_peak_bytes == m.step_peak_bytes
    assert table.held_bytes == m.held_bytes
    assert [ev[2] for ev in table.events] == m.timeline_bytes


def test_printed_table_lists_large_rows_and_aggregates_small_ones(table):
    text = str(table)
    lines = text.splitlines()
    large, small = table.large(), table.small()
    assert len(large) + len(small) == len(table.rows) and small and all(r.nbytes < 1024 for r in small)
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(rows) == len(large)
    assert sum(1 for line in rows if " N x D " in line) == 9
    assert sum(1 for line in rows if " B x N " in line) == 12 + 2
    summary = [line for line in lines if "allocations below 1,024 bytes" in line]
    assert len(summary) == 1 and f"{len(small)} allocations" in summary[0]
    assert f"{sum(r.nbytes for r in small):,} bytes in all" in summary[0]
    assert "step peak" in lines[-1] and "5 (N x D)" in lines[-1]
    assert "zero_grad: it was W.grad" in text
    assert "LinalgVectorNormBackward0" in table.format_events()


def test_symbolic_shape():
    sym = dict(N=1000, D=64, B=32)
    assert symbolic_shape((1000, 64), sym) == "N x D"
    assert symbolic_shape((32, 1000), sym) == "B x N"
    assert symbolic_shape((1000, 1), sym) == "N x 1"
    assert symbolic_shape((), sym) == "scalar"
    assert symbolic_shape((64, 64), dict(N=1000, D=64, B=64)) == "D|B x D|B"
    assert symbolic_shape(None, sym, nbytes=1000 * 64 * 4, itemsize=4) == "~N x D"
    assert symbolic_shape(None, sym, nbytes=32 * 1000, itemsize=4) == "~B x N"  # a bool mask
    assert symbolic_shape(None, sym, nbytes=12345, itemsize=4) == "?"


def test_measured_timeline_carries_the_models_four_phases():
    m = measure_head_step(FullFC(D, N), batch_size=B, device="cpu", time_step=False)
    assert len(m.timeline_model_phase) == len(m.timeline_bytes)
    seen = []
    for p in m.timeline_model_phase:
        if p and (not seen or seen[-1] != p):
            seen.append(p)
    assert seen == list(HEAD_PHASES["fc"])
    # the measured phases are unchanged; the model's split the backward in two
    assert set(m.phase_peaks) == {"forward", "backward", "optimizer"}
    pred = predict_memory(N, D, B)
    for phase in HEAD_PHASES["fc"]:
        peak = max(v for v, p in zip(m.timeline_bytes, m.timeline_model_phase) if p == phase)
        # the model leaves out a few tiny tensors, and in the optimizer the embeddings' B x D
        # gradient (freed with the step's end)
        assert abs(peak - pred.phases[phase]) < B * D * E + 4096, phase
    peak_phase = m.timeline_model_phase[m.timeline_bytes.index(m.step_peak_bytes)]
    assert peak_phase == pred.peak_phase == "backward: centres"


def test_partial_fc_timeline_has_its_scatter_phase():
    from attfc_lite.heads import make_head

    m = measure_head_step(make_head("partial_fc", D, N, sample_rate=0.2), batch_size=B, device="cpu",
                          time_step=False)
    seen = []
    for p in m.timeline_model_phase:
        if p and (not seen or seen[-1] != p):
            seen.append(p)
    assert seen == list(HEAD_PHASES["partial_fc"])


# --------------------------------------------------------------------------- plots


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_timeline_shades_the_models_four_phases_with_a_legend():
    m = measure_head_step(FullFC(D, N), batch_size=B, device="cpu", time_step=False)
    pred = predict_memory(N, D, B)
    ax = plot_timeline(m, pred)
    texts = _legend_texts(ax)
    for phase in HEAD_PHASES["fc"]:
        assert f"phase: {phase}" in texts
    assert len([t for t in texts if t.startswith("phase: ")]) == 4
    assert any("measured" in t for t in texts) and any("step peak" in t for t in texts)
    assert any("phase's total" in t for t in texts)
    assert ax.get_title() and "N=1,000" in ax.get_title()
    assert ax.get_xlabel() == "time from the step's start (ms)"
    assert "(MiB)" in ax.get_ylabel()
    assert ax.get_ylim()[0] == 0
    assert max(ax.lines[0].get_ydata()) == pytest.approx(m.step_peak_bytes / MiB)
    # each phase's model line sits at the predicted total of that phase
    levels = {round(float(line.get_ydata()[0]), 6) for line in ax.lines[2:]}
    assert {round(v / MiB, 6) for v in pred.phases.values()} <= levels


def test_timeline_units_follow_the_numbers():
    m = StepMeasurement(
        device="cpu", method="hand", config=dict(head="toy", num_classes=10, embedding_dim=4, batch_size=2),
        held_bytes=0, step_peak_bytes=3_000_000, peak_bytes=3_000_000, phase_peaks={}, step_seconds=None,
        timeline_ms=[1.0, 2.0, 3.0], timeline_bytes=[1_000_000, 3_000_000, 0],
        timeline_phase=["forward", "backward", "optimizer"],
    )
    ax = plot_timeline(m, unit="MB")
    assert "(MB)" in ax.get_ylabel() and max(ax.lines[0].get_ydata()) == pytest.approx(3.0)
    texts = _legend_texts(ax)  # without the model's phases: the three measured ones
    assert {t for t in texts if t.startswith("phase: ")} == {"phase: forward", "phase: backward", "phase: optimizer"}


def test_memory_vs_classes_labels_every_marked_line():
    ax = plot_memory_vs_classes(num_classes=[1000, 10_000], measured={1000: 14 * MiB})
    texts = _legend_texts(ax)
    assert "measured peak" in texts
    assert "identities of a public dataset" in texts and "memory of one GPU" in texts
    assert ax.get_title() and "(GiB" in ax.get_ylabel() and ax.get_xlabel()
    assert len([line for line in ax.lines if len(line.get_xdata()) == 2
                and line.get_xdata()[0] == line.get_xdata()[1]]) == len(DATASETS)


def test_breakdown_has_a_title_units_and_a_zero_baseline():
    bds = {"FC": predict_memory(N, D, B), "FC fp16": predict_memory(N, D, B, dtype="float16")}
    ax = plot_breakdown(bds, unit="MiB", capacity_gib=None, measured={"FC": bds["FC"].peak})
    assert ax.get_title() and "(MiB)" in ax.get_ylabel() and ax.get_xlabel() == "head"
    assert ax.get_ylim()[0] == 0
    texts = _legend_texts(ax)
    assert "measured peak" in texts and "class_centres" in texts
    assert any(t.get_text().endswith(" MiB") for t in ax.texts)
    assert plot_breakdown(bds, title="mine").get_title() == "mine"


def test_allocation_table_other_heads_and_optimizers():
    adam = allocation_table("fc", N, D, B, optimizer="adam")
    opt_nd = adam.select(symbolic="N x D", phase="optimizer")
    assert len(opt_nd) == 2 and all(r.freed_phase == "optimizer" for r in opt_nd)  # sqrt(v) and the denominator
    pfc = allocation_table("partial_fc", N, D, B, sample_rate=0.2)
    assert pfc.symbols["S"] == 200
    scatter = pfc.select(model_phase="backward: scatter", symbolic="N x D")
    assert len(scatter) == 1 and "zero_grad" in scatter[0].freed_in  # the dense W.grad
    assert pfc.select(symbolic="B x S")
    with pytest.raises(ValueError, match="num_classes"):
        allocation_table("fc", 1)
    assert torch.get_default_dtype() == torch.float32
