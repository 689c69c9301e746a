"""Before measuring, the memory model's peak against what the device has free; arguments checked
where they enter; the out-of-memory explanation; JSON without NaN. Sizes are computed by hand."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from attfc_lite.checks import ArgumentError
from attfc_lite.heads import FullFC
from attfc_lite.memory import (
    StepMeasurement,
    agreement_table,
    allocation_table,
    available_bytes,
    canonical_head,
    dtype_name,
    explain_oom,
    find_oom_boundary,
    format_agreement,
    format_bytes,
    make_optimizer,
    measure_backbone,
    measure_head_step,
    memory_report,
    optimizer_copies,
    plot_breakdown,
    plot_memory_vs_classes,
    precision_config,
    predict_memory,
    predict_training_step,
    predicted_boundary,
    training_step_boundary,
)
from attfc_lite.capped import train_under_budget
from attfc_lite.memory import agreement, allocations, guard, head_measure, oom
from attfc_lite.memory.step import measure_model_step, thin_timeline
from attfc_lite.train import TrainConfig, memory_knobs

GiB, MiB = 2 ** 30, 2 ** 20
D, B = 512, 128


def fc_peak(n: int, d: int = D, b: int = B, e: int = 4) -> int:
    """FC head step, SGD with momentum: W, momentum and the batch held; at the peak W.grad and the
    four temporaries of F.normalize(W)'s backward (5 N x D) and the normalised embeddings."""
    return 7 * n * d * e + 2 * b * d * e + 8 * b


@pytest.fixture
def free_memory(monkeypatch):
    """Set what the device has available (bytes), whatever the machine."""
    def set_to(n_bytes: int) -> None:
        monkeypatch.setattr(guard, "available_bytes", lambda device: n_bytes)
    return set_to


@pytest.fixture
def spy(monkeypatch):
    """Replace module.name by a recorder that fails the test if it is ever called."""
    calls: list[str] = []

    def install(module, name: str) -> list[str]:
        def called(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called: something would have been allocated")
        monkeypatch.setattr(module, name, called)
        return calls
    return install


# --------------------------------------------------------------------------- what fits


def test_check_fits_allows_three_quarters_of_the_cpu_and_nine_tenths_of_cuda(free_memory):
    free_memory(200)
    guard.check_fits(150, "cpu", "budget_bytes", "x", "")  # exactly three quarters: measured
    with pytest.raises(ArgumentError) as info:
        guard.check_fits(151, "cpu", "budget_bytes", "x", "")
    assert info.value.name == "budget_bytes"
    guard.check_fits(180, torch.device("cuda"), "budget_bytes", "x", "")  # 0.9 x 200
    with pytest.raises(ArgumentError):
        guard.check_fits(181, torch.device("cuda"), "budget_bytes", "x", "")


def test_a_whole_step_too_large_blames_no_one_argument(free_memory):
    # None is what the head-step measurements pass: N, D and B together set the step
    name = None
    free_memory(200)
    guard.check_fits(150, "cpu", name, "N = 5, D = 6, B = 7: one fc head step", "advice.")
    with pytest.raises(ValueError) as info:
        guard.check_fits(151, "cpu", name, "N = 5, D = 6, B = 7: one fc head step", "advice.")
    text = str(info.value)
    assert not isinstance(info.value, ArgumentError) and not text.startswith("num_classes")
    assert text.startswith("this step is too large to measure on cpu: N = 5, D = 6, B = 7") and text.endswith("advice.")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_available_cpu_memory_is_positive_and_below_the_machines():
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < available_bytes("cpu") <= total


def test_format_bytes_by_hand():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * MiB // 2) == "1.5 MiB"
    assert format_bytes(fc_peak(10 ** 12)) == "12.7 PiB"  # 1.4336e16 bytes / 2^50


def test_memory_report_refuses_what_cannot_fit_and_allocates_nothing(free_memory, spy):
    free_memory(GiB)
    calls = spy(agreement, "build_head")  # memory_report's callees, looked up in agreement
    spy(agreement, "measure_head_step")
    n = 10 ** 6
    with pytest.raises(ValueError) as info:
        memory_report("fc", n, D, B)
    assert calls == []
    text = str(info.value)
    assert not isinstance(info.value, ArgumentError)  # N, D and B together: no one of them is blamed
    assert text.startswith(f"this step is too large to measure on cpu: N = 1,000,000, D = {D}, B = {B}")
    # needed: 7 x 10^6 x 2048 + 2 x 128 x 2048 + 1024 = 14,336,525,312 bytes = 13.4 GiB
    assert fc_peak(n) == 14_336_525_312
    assert "needs about 13.4 GiB" in text and "1.0 GiB available" in text and "768.0 MiB" in text
    assert "measure=False" in text and "--no-measure" in text
    # the prediction alone is still given, the same machine
    assert memory_report("fc", n, D, B, measure=False)["predicted"]["peak"] == fc_peak(n)


@pytest.mark.parametrize("head,sizes,shown", [
    ("fc", dict(embedding_dim=10 ** 9), "N = 1,000, D = 1,000,000,000, B = 128"),
    ("fc", dict(batch_size=10 ** 9), "N = 1,000, D = 512, B = 1,000,000,000"),
    ("attfc", dict(num_keys=10 ** 9), "N = 1,000, D = 512, B = 128"),  # K keys per query
])
def test_memory_report_does_not_blame_num_classes_for_another_size(free_memory, spy, head, sizes, shown):
    free_memory(GiB)
    calls = spy(agreement, "build_head")
    with pytest.raises(ValueError) as info:
        memory_report(head, 1000, device="cpu", **sizes)
    text = str(info.value)
    assert calls == [] and not isinstance(info.value, ArgumentError)
    assert text.startswith(f"this step is too large to measure on cpu: {shown}") and "--no-measure" in text
    assert "num_classes" not in text and "classes is too large" not in text
    # what the message advises: the prediction alone
    assert memory_report(head, 1000, device="cpu", measure=False, **sizes)["measured_peak_bytes"] is None


def test_memory_command_does_not_blame_classes_for_a_huge_dim(free_memory, capsys):
    from attfc_lite.__main__ import main

    free_memory(GiB)
    with pytest.raises(SystemExit) as exit_:
        main(["memory", "--classes", "1000", "--dim", "1e9", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "error: this step is too large to measure on cpu: N = 1,000, D = 1,000,000,000, B = 128" in err
    assert "--classes" not in err and "--no-measure" in err


def test_memory_command_max_share_is_checked_and_named(free_memory, capsys):
    from attfc_lite.__main__ import main

    free_memory(fc_peak(1000) * 2)  # the step fits in three quarters, not in a third
    with pytest.raises(SystemExit) as exit_:
        main(["memory", "--classes", "1000", "--dim", str(D), "--batch", str(B), "--device", "cpu",
              "--max-share", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "at most 30% of it" in err and "--max-share" in err
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit) as exit_:
            main(["memory", "--classes", "1000", "--device", "cpu", "--max-share", bad])
        assert exit_.value.code == 2 and "--max-share" in capsys.readouterr().err


def test_max_share_sets_the_share_and_the_refusal_names_it(free_memory):
    free_memory(200)
    guard.check_fits(190, "cpu", "budget_bytes", "x", "", max_share=0.95)
    with pytest.raises(ArgumentError, match="max_share, --max-share") as info:
        guard.check_fits(101, "cpu", "budget_bytes", "x", "", max_share=0.5)
    assert "at most 50% of it" in str(info.value)
    with pytest.raises(ValueError, match="at most 75% of it .*max_share, --max-share"):
        guard.check_fits(151, "cpu", None, "x", "")
    for bad in (0, 1.5, float("nan"), "half"):
        with pytest.raises(ArgumentError, match="^max_share"):
            guard.check_fits(1, "cpu", None, "x", "", max_share=bad)


def test_memory_report_measures_exactly_up_to_three_quarters_of_the_available_memory(free_memory, monkeypatch):
    n = 2000
    seen = []

    def fake_measure(head, batch_size, optimizer, device, **kw):
        seen.append((head.num_classes, batch_size))
        return StepMeasurement(device="cpu", method="fake", config={}, held_bytes=1, step_peak_bytes=1, peak_bytes=2,
                               phase_peaks={}, step_seconds=0.1, timeline_ms=[], timeline_bytes=[], timeline_phase=[])

    monkeypatch.setattr(agreement, "measure_head_step", fake_measure)  # what memory_report calls
    free_memory(fc_peak(n) * 4 // 3 + 4)  # the peak is then just within three quarters
    memory_report("fc", n, D, B, device="cpu")
    assert seen == [(n, B)]
    free_memory(fc_peak(n) * 4 // 3 - 4)
    with pytest.raises(ValueError, match="^this step is too large to measure on cpu: N = 2,000"):
        memory_report("fc", n, D, B, device="cpu")
    assert len(seen) == 1
    memory_report("fc", n, D, B, device="cpu", max_share=1.0)  # the user's own share
    assert len(seen) == 2
    with pytest.raises(ValueError, match="at most 50% of it"):
        memory_report("fc", n, D, B, device="cpu", max_share=0.5)


def test_measure_head_step_refuses_before_its_first_tensor(free_memory, spy):
    head = FullFC(D, 1000)
    free_memory(1)
    calls = spy(head_measure, "step_inputs")
    with pytest.raises(ValueError, match="^this step is too large to measure on cpu: N = 1,000"):
        measure_head_step(head, B, device="cpu")
    assert calls == []


def test_agreement_table_checks_every_size_before_measuring_the_first(free_memory, spy):
    free_memory(2 * fc_peak(1000))
    calls = spy(agreement, "measure_head_step")
    with pytest.raises(ValueError, match=r"^this step is too large to measure on cpu: N = 1,000,000"):
        agreement_table((1000, 10 ** 6), D, B)
    assert calls == []


def test_allocation_table_refuses_what_cannot_fit(free_memory, spy):
    free_memory(MiB)
    calls = spy(allocations, "build_head")
    with pytest.raises(ValueError, match="^this step is too large to measure on cpu: N = 100,000, D = 64, B = 32"):
        allocation_table("fc", 10 ** 5, 64, 32)
    assert calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU cap uses RLIMIT_AS")
def test_oom_search_and_capped_run_refuse_a_budget_past_the_machine(free_memory, spy):
    free_memory(GiB)
    calls = spy(oom, "_run_child")
    with pytest.raises(ArgumentError) as info:
        find_oom_boundary(GiB, "fc", D, B)  # more than half of the 1 GiB available
    assert info.value.name == "budget_bytes" and "predicted_boundary" in str(info.value)
    with pytest.raises(ArgumentError, match="budget_bytes"):
        train_under_budget(TrainConfig(num_classes=50, device="cpu"), GiB, "cpu")
    assert calls == []


def test_measure_model_step_refuses_before_building(free_memory, spy):
    import attfc_lite.train as train

    calls = spy(train, "build")
    # the 8 images of 3 x 16 x 16 floats alone need 24,576 bytes: more than half of 49,151
    assert 8 * 3 * 16 * 16 * 4 == 24_576
    free_memory(49_151)
    with pytest.raises(ValueError, match="^this step is too large to measure on cpu: N = 50, D = 16, B = 8"):
        measure_model_step(TrainConfig(num_classes=50, embedding_dim=16, batch_size=8, image_size=16, device="cpu"))
    assert calls == []


# --------------------------------------------------------------------------- arguments


NAN, INF = float("nan"), float("inf")


def _bad_calls():
    p = predict_memory
    cases = [
        (lambda: p(10.7), "num_classes"),
        (lambda: p(True), "num_classes"),
        (lambda: p(1), "num_classes"),
        (lambda: p(NAN), "num_classes"),
        (lambda: p(1000, embedding_dim=0), "embedding_dim"),
        (lambda: p(1000, batch_size=1.5), "batch_size"),
        (lambda: p(1000, dtype="int8"), "dtype"),
        (lambda: p(1000, dtype=5), "dtype"),
        (lambda: p(1000, optimizer="lbfgs"), "optimizer"),
        (lambda: p(1000, optimizer=None), "optimizer"),
        (lambda: p(1000, head="vfc"), "head"),
        (lambda: p(1000, head=None), "head"),
        (lambda: p(1000, momentum=NAN), "momentum"),
        (lambda: p(1000, momentum=1.0), "momentum"),
        (lambda: p(1000, momentum=-0.1), "momentum"),
        (lambda: p(1000, weight_decay=INF), "weight_decay"),
        (lambda: p(1000, weight_decay=-1e-4), "weight_decay"),
        (lambda: p(1000, head="partial_fc", sample_rate=0.0), "sample_rate"),
        (lambda: p(1000, head="partial_fc", sample_rate=1.5), "sample_rate"),
        (lambda: p(1000, head="partial_fc", sample_rate=NAN), "sample_rate"),
        (lambda: p(1000, head="attfc", container_ratio=NAN), "container_ratio"),
        (lambda: p(1000, head="attfc", container_ratio=0), "container_ratio"),
        (lambda: p(1000, head="attfc", container_size=2.5), "container_size"),
        (lambda: p(1000, head="attfc", num_keys=0), "num_keys"),
        (lambda: p(1000, head="attfc", backbone_params=-1), "backbone_params"),
        (lambda: p(1000, amp_dtype="float32"), "amp_dtype"),
        (lambda: p(1000, amp_dtype="int4"), "amp_dtype"),
        (lambda: predicted_boundary(0), "budget_bytes"),
        (lambda: predicted_boundary(1.5), "budget_bytes"),
        (lambda: predicted_boundary(GiB, num_classes=5), "num_classes"),
        (lambda: predict_training_step(1000, precision="fp8"), "precision"),
        (lambda: predict_training_step(1000, backbone="vit"), "backbone"),
        (lambda: predict_training_step(1000, batch_size=10.7), "batch_size"),
        (lambda: predict_training_step(NAN), "num_classes"),
        (lambda: training_step_boundary(NAN), "budget_bytes"),
        (lambda: training_step_boundary(GiB, limit=1), "limit"),
        (lambda: optimizer_copies("rmsprop"), "optimizer"),
        (lambda: optimizer_copies("sgd", momentum=NAN), "momentum"),
        (lambda: precision_config(5), "precision"),
        (lambda: dtype_name("float8"), "dtype"),
        (lambda: canonical_head(3), "head"),
        (lambda: memory_report("fc"), "num_classes"),
        (lambda: memory_report("fc", 10.7, measure=False), "num_classes"),
        (lambda: memory_report("fc", 1000, device="gpu"), "device"),
        (lambda: memory_report("fc", 1000, measure="no"), "measure"),
        (lambda: memory_report("fc", 1000, measure=False, momentum=NAN), "momentum"),
        (lambda: measure_head_step(FullFC(16, 10), 0, device="cpu"), "batch_size"),
        (lambda: measure_head_step(FullFC(16, 10), 8, device="tpu"), "device"),
        (lambda: measure_head_step(FullFC(16, 10), 8, device="cpu", warmup_steps=-1), "warmup_steps"),
        (lambda: measure_head_step(FullFC(16, 10), 8, device="cpu", lr=0), "lr"),
        (lambda: make_optimizer(list(FullFC(16, 10).parameters()), lr=NAN), "lr"),
        (lambda: format_agreement([], unit="TB"), "unit"),
        (lambda: format_agreement([], digits=-1), "digits"),
        (lambda: agreement_table([1000, 10.7]), "num_classes"),
        (lambda: agreement_table("1000"), "num_classes"),
        (lambda: agreement_table([]), "num_classes"),
        (lambda: allocation_table("fc", 10.7), "num_classes"),
        (lambda: allocation_table("fc", 100, min_bytes=-1), "min_bytes"),
        (lambda: find_oom_boundary(MiB, growth=1.0), "growth"),
        (lambda: find_oom_boundary(MiB, rtol=0), "rtol"),
        (lambda: find_oom_boundary(MiB, device="tpu"), "device"),
        (lambda: find_oom_boundary(MiB, max_classes=1.5), "max_classes"),
        (lambda: find_oom_boundary(MiB, start=1), "start"),
        (lambda: find_oom_boundary(MiB, timeout_s=NAN), "timeout_s"),
        (lambda: find_oom_boundary(MiB, model_head="arcface"), "head"),
        (lambda: measure_model_step(TrainConfig(num_classes=50, device="cpu"), warmup_steps=0), "warmup_steps"),
        (lambda: measure_model_step(TrainConfig(num_classes=50, device="cpu"), device="npu"), "device"),
        (lambda: thin_timeline({"timeline_ms": []}, points=1), "points"),
        (lambda: measure_backbone(torch.nn.Identity(), 7), "image_size"),
        (lambda: measure_backbone(torch.nn.Identity(), 32, batch_sizes=(4, 4)), "batch_sizes"),
        (lambda: measure_backbone("iresnet50", 112), "backbone"),
        (lambda: plot_breakdown({"FC": predict_memory(1000)}, capacity_gib=NAN), "capacity_gib"),
        (lambda: plot_memory_vs_classes(num_classes=[1000, 10.7]), "num_classes"),
        (lambda: explain_oom("fc", 10.7), "num_classes"),
        (lambda: explain_oom("fc", 1000, lr=0.1), "lr"),
        (lambda: explain_oom("fc", 1000, capacity_bytes=0), "capacity_bytes"),
        (lambda: explain_oom("fc", 1000, top=0), "top"),
        (lambda: explain_oom("fc", 1000, momentum=NAN), "momentum"),
    ]
    return [pytest.param(call, name, id=f"{i}-{name}") for i, (call, name) in enumerate(cases)]


@pytest.mark.parametrize("call,name", _bad_calls())
def test_a_bad_value_is_refused_naming_its_argument(call, name):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, ArgumentError) and info.value.name == name, info.value
    assert str(info.value).startswith(name)


def test_good_values_still_work_by_hand():
    # 1e6 is a whole number: accepted as 1,000,000, not refused
    assert predict_memory(1e6).config["num_classes"] == 1_000_000 and predict_memory(1e6).peak == fc_peak(10 ** 6)
    assert predict_memory(1000, D, B, optimizer="SGD").config["optimizer"] == "sgd"
    assert predict_memory(1000, D, B, torch.float16).terms["class_centres"] == 1000 * D * 2
    assert predicted_boundary(GiB) == (GiB - 2 * B * D * 4 - 8 * B) // (7 * D * 4)
    assert optimizer_copies("adam", momentum=0.0) == (2, 2)
    q = predict_memory(1000, head="attfc", container_size=10.0, container_ratio=None).config["container_size"]
    assert q == 10
    assert predict_training_step(1e3, backbone=None).peak == fc_peak(1000)
    assert memory_report("fc", "1e3", measure=False, device="cpu")["predicted"]["peak"] == fc_peak(1000)
    assert thin_timeline({"timeline_ms": [0.0], "timeline_bytes": [1], "timeline_phase": ["forward"]}, 2.0)


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("head,knobs", [("fc", {}), ("partial_fc", dict(sample_rate=0.1)),
                                        ("attfc", dict(container_ratio=0.3, num_keys=2))])
def test_predicted_report_is_strict_json(head, knobs):
    r = memory_report(head, 10 ** 6, D, B, measure=False, **knobs)
    assert json.loads(json.dumps(r, allow_nan=False))["num_classes"] == 10 ** 6


def test_a_measurement_that_saw_nothing_gives_null_not_nan(monkeypatch):
    def nothing(head, batch_size, optimizer, device, **kw):
        return StepMeasurement(device="cpu", method="fake", config={}, held_bytes=0, step_peak_bytes=0, peak_bytes=0,
                               phase_peaks={"forward": 0}, step_seconds=float("nan"), timeline_ms=[],
                               timeline_bytes=[], timeline_phase=[])

    monkeypatch.setattr(agreement, "measure_head_step", nothing)
    r = memory_report("fc", 100, 16, 8, device="cpu")
    text = json.dumps(r, allow_nan=False)  # raises on nan or inf
    assert r["relative_error"] is None and r["step_seconds"] is None
    assert json.loads(text)["predicted"]["peak"] == fc_peak(100, 16, 8)


def test_a_real_small_measurement_is_strict_json():
    r = memory_report("fc", 1000, 64, 32, device="cpu")
    json.dumps(r, allow_nan=False)
    assert math.isfinite(r["relative_error"]) and r["measured_peak_bytes"] > 0


# --------------------------------------------------------------------------- out of memory, explained


N42 = 2_059_906


def test_explain_oom_gives_the_models_terms_and_the_alternatives_by_hand():
    config = TrainConfig(head="fc", num_classes=N42, embedding_dim=D, batch_size=B)
    text = explain_oom("fc", N42, D, B, **memory_knobs(config))
    w = N42 * D * 4
    assert w == 4_218_687_488
    assert f"N x D = {N42:,} x {D} x 4 bytes = {w:,} bytes (3.9 GiB)" in text
    # the peak: W, momentum, the batch; W.grad and F.normalize's four temporaries: 27.5 GiB
    assert round(fc_peak(N42) / GiB, 1) == 27.5 and "27.5 GiB at its peak" in text
    assert f"normalize_backward    15.7 GiB  ({4 * w:,} bytes" in text  # the largest term comes first
    assert text.index("normalize_backward") < text.index("class_centres")
    # Partial FC (weight decay: one optimizer temporary): at its optimizer phase 4 N x D + the batch
    pfc = 4 * w + B * D * 4 + 8 * B
    assert f"Partial FC (--head partial_fc, --sample-rate 0.1): {pfc / GiB:.1f} GiB" in text
    # AttFC: the container Q = 0.3 N, Q x (4D + 8), the batch with 2 keys, the B x Q logits and mask
    q = 617_971
    att = q * (4 * D + 8) + 3 * B * D * 4 + 8 * B + 2 * B * D * 4 + 5 * B * q
    assert f"AttFC (--head attfc): {att / GiB:.1f} GiB" in text
    assert f"--classes): {fc_peak(N42 // 2) / GiB:.1f} GiB at N = {N42 // 2:,}" in text
    assert "--batch-size" in text


def test_explain_oom_with_the_device_says_how_many_identities_fit():
    cap = 24 * GiB
    text = explain_oom("fc", N42, D, B, capacity_bytes=cap)
    most = (cap - 2 * B * D * 4 - 8 * B) // (7 * D * 4)
    assert f"does not fit; at most N = {most:,} identities" in text
    roomy = explain_oom("fc", 1000, D, B, capacity_bytes=cap)
    assert "fits" in roomy and "backbone" in roomy and "--amp" in roomy
    # AttFC with a fixed container fits any N: no largest N, and no endless search for one
    fixed = explain_oom("attfc", N42, D, B, capacity_bytes=cap, container_size=1000, container_ratio=0.3, num_keys=2)
    assert "at most N" not in fixed and "smaller container" in fixed


# --------------------------------------------------------------------------- the out-of-memory message, whole

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 31457280 bytes. Error code 12 (Cannot allocate memory)")
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
            "1.20 GiB is free. Including non-PyTorch memory, this process has 16.00 GiB memory in use.")


@pytest.mark.parametrize("message, size", [
    (CPU_OOM, 31_457_280), (CUDA_OOM, int(2.5 * 2 ** 30)), ("Tried to allocate 20.00 MiB", 20 * 2 ** 20),
    ("tried to allocate 512 KiB", 512 * 1024), ("you tried to allocate 1,024 bytes", 1024),
    ("out of memory", None), ("", None),
])
def test_requested_bytes_reads_the_allocators_words(message, size):
    from attfc_lite.memory.oom import requested_bytes

    assert requested_bytes(message) == size


def test_oom_record_keeps_the_whole_message():
    from attfc_lite.memory.oom import oom_record
    from attfc_lite.train import TrainingOutOfMemory

    long = "out of memory in training step 3 of head attfc: " + CPU_OOM + "\nfewer identities ..." + "x" * 300
    record = oom_record(RuntimeError(long))
    assert record["error"] == long and len(record["error"]) > 400  # never cut
    assert record["requested_bytes"] == 31_457_280
    # train() wraps the allocator's error, keeping its words whole: the size is still read from them
    wrapped = TrainingOutOfMemory("out of memory in training step 0 (epoch 1) of head fc: " + CUDA_OOM
                                  + "\nOut of memory. The FC head's step alone is predicted to need 2.0 GiB")
    assert oom_record(wrapped)["requested_bytes"] == int(2.5 * 2 ** 30)
    assert oom_record(MemoryError()) == {"error": "MemoryError", "requested_bytes": None}
