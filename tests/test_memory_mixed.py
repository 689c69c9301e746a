"""Mixed precision, the backbone and the whole training step: the memory model against
hand-computed byte counts and against measurements on the CPU.

Mixed precision is measured as practitioners train: torch.autocast('cpu', dtype=torch.bfloat16)
around the head's forward, fp32 master weights, the allocations read from torch.profiler.
"""
from __future__ import annotations

import gc

import pytest
import torch

from attfc_lite.heads import make_head
from attfc_lite.memory import (
    BACKBONES,
    BackboneSpec,
    backbone_spec,
    measure_backbone,
    measure_head_step,
    precision_config,
    predict_memory,
    predict_training_step,
    reference_backbone,
    training_step_boundary,
)
from attfc_lite.memory.measure import _held_tensors, _profile_cpu_step, _running, _unique_bytes, head_step, make_optimizer

GiB = 2**30
MIB = 2**20

#: Stated tolerance of the mixed-precision head model against the CPU measurement (peak and step peak).
MIXED_TOLERANCE = 0.01


def measure_autocast_head_step(head_name: str, n: int, d: int, b: int, optimizer: str) -> dict:
    """One steady-state head step under torch.autocast('cpu', bfloat16), fp32 master weights:
    held bytes (summed from the real tensors) and the step's peak (profiler allocation records)."""
    torch.manual_seed(0)
    head = make_head(head_name, d, n)
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(b, d, generator=gen).requires_grad_(True)
    labels = torch.randint(0, n, (b,), generator=gen)
    opt = make_optimizer(list(head.parameters()), optimizer)

    def run(mark=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return head_step(head, embeddings, labels, opt, mark)

    run()  # creates the optimizer state
    run()
    gc.collect()
    held = _unique_bytes(_held_tensors(head, opt, embeddings, labels, None))
    _, sizes, phases = _profile_cpu_step(run)
    _, step_peak, phase_peaks = _running(sizes, phases)
    assert head.weight.dtype == torch.float32  # master weights stay fp32
    return {"held": held, "step_peak": step_peak, "peak": held + step_peak, "phase_peaks": phase_peaks}


# --------------------------------------------------------------------------- mixed precision, by hand


def test_mixed_fc_head_by_hand():
    n, d, b = 1000, 512, 128
    p = predict_memory(n, d, b, amp_dtype="bfloat16")
    # held: fp32 W, fp32 momentum, fp32 embeddings [B, D] and int64 labels
    held = 4 * n * d + 4 * n * d + 4 * b * d + 8 * b
    assert p.held == held == 4_359_168
    # the largest phase: F.normalize(W)'s backward, in fp32 although the matmul ran in bf16:
    # the fp32 gradient of the normalised copy, three temporaries and the result (5 x 4ND),
    # the two fp32 norm vectors [N], the fp32 normalised embeddings and their bf16 copy
    step = 5 * 4 * n * d + 2 * 4 * n + b * d * (4 + 2)
    assert p.peak_phase == "backward: centres"
    assert p.step_peak == step == 10_641_216
    assert p.peak == held + step
    # the half copy of the centres and the cosines are 2 bytes per element
    assert p.terms["half_centres"] == 2 * n * d and p.terms["cosines"] == 2 * b * n
    # Adam: two fp32 moments held instead of one momentum buffer; the same peak phase
    adam = predict_memory(n, d, b, optimizer="adam", amp_dtype="float16")
    assert adam.held == held + 4 * n * d and adam.step_peak == step


def test_mixed_logits_by_hand_when_the_batch_is_wider_than_the_embedding():
    # B >> D: the loss dominates. Forward at the loss: bf16 cosines, bf16 margin logits, their
    # fp32 copy and the fp32 log-softmax (2 + 2 + 4 + 4 bytes per logit), next to the bf16
    # copy of the centres and the norms.
    n, d, b = 4000, 64, 2048
    p = predict_memory(n, d, b, amp_dtype="bfloat16")
    forward_loss = 12 * b * n + 2 * n * d + 8 * n + b * d * 6
    assert p.phases["forward: loss"] == forward_loss
    # backward at the logits: bf16 cosines, fp32 log-softmax and two fp32 gradients
    assert p.phases["backward: logits"] == 14 * b * n + 2 * n * d + 8 * n + b * d * 6
    assert p.peak_phase == "backward: logits"
    # fp32 (no autocast) for comparison: 16 bytes per logit in the forward (model of lesson 02)
    assert predict_memory(n, d, b).phases["forward"] == 16 * b * n + 4 * n * d + 8 * n + 4 * b * d


# --------------------------------------------------------------------------- mixed precision, measured


@pytest.mark.parametrize("head_name,n,d,b,optimizer", [
    ("fc", 20_000, 512, 128, "sgd"),
    ("fc", 20_000, 512, 128, "adam"),
    ("fc", 4_000, 64, 1024, "sgd"),  # B > D: the peak is in the logits
    ("partial_fc", 20_000, 512, 128, "sgd"),
])
def test_mixed_head_step_against_cpu_autocast(head_name, n, d, b, optimizer):
    measured = measure_autocast_head_step(head_name, n, d, b, optimizer)
    pred = predict_memory(n, d, b, optimizer=optimizer, head=head_name, amp_dtype="bfloat16")
    # W, optimizer state and the batch, to the byte but for Adam's scalar step counter (4 bytes)
    assert 0 <= measured["held"] - pred.held <= (4 if optimizer == "adam" else 0)
    assert abs(pred.peak - measured["peak"]) / measured["peak"] < MIXED_TOLERANCE
    assert abs(pred.step_peak - measured["step_peak"]) / measured["step_peak"] < MIXED_TOLERANCE
    # where the peak is: the model's peak phase lies in the measured phase with the largest peak
    measured_phase = max(measured["phase_peaks"], key=measured["phase_peaks"].get)
    assert pred.peak_phase.split(":")[0] == measured_phase


def test_autocast_does_not_shrink_the_fc_head_at_d_above_b():
    """Measured: at D > B the FC step's peak under autocast is within 1 % of fp32's (F.normalize(W)
    and its backward stay fp32); pure fp16 would halve it, but nobody trains that way."""
    n, d, b = 20_000, 512, 128
    mixed = measure_autocast_head_step("fc", n, d, b, "sgd")
    fp32 = measure_head_step(make_head("fc", d, n), b, "sgd", "cpu", time_step=False)
    assert abs(mixed["peak"] - fp32.peak_bytes) / fp32.peak_bytes < 0.01
    assert predict_memory(n, d, b, dtype="float16").peak < 0.51 * fp32.peak_bytes


def test_precision_names_and_bad_input():
    assert precision_config("mixed_bf16") == {"dtype": "float32", "amp_dtype": "bfloat16", "precision": "mixed_bf16",
                                              "label": "mixed bf16 (autocast, fp32 master weights)"}
    assert precision_config("float16")["precision"] == "pure_fp16"  # the old menu's "float16": everything fp16
    assert "not how models are trained" in precision_config("pure_fp16")["label"]
    with pytest.raises(ValueError, match=r"precision must be one of .*mixed_fp16"):
        precision_config("int8")
    with pytest.raises(ValueError, match="amp_dtype must be 'float16' or 'bfloat16'"):
        predict_memory(1000, amp_dtype="float32")
    with pytest.raises(ValueError, match="pass dtype='float32'"):
        predict_memory(1000, dtype="float16", amp_dtype="float16")
    with pytest.raises(ValueError, match="pass amp_dtype=None"):
        predict_memory(1000, head="attfc", amp_dtype="bfloat16")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        predict_training_step(1000, optimizer="rmsprop")
    with pytest.raises(ValueError, match="num_classes must be a whole number >= 2"):
        predict_training_step(-5)
    with pytest.raises(ValueError, match=r"backbone must be one of .*iresnet50"):
        predict_training_step(1000, backbone="vit")


# --------------------------------------------------------------------------- the backbone


def test_iresnet_parameter_counts_are_insightfaces():
    # insightface's iresnet50 / iresnet100 with a 512-d embedding: 43.6 M and 65.2 M parameters
    for name, published in (("iresnet50", 43.6e6), ("iresnet100", 65.2e6)):
        count = sum(p.numel() for p in reference_backbone(name).parameters())
        assert count == BACKBONES[name].params
        assert abs(count - published) / published < 0.002


def test_iresnet50_activations_measured_two_ways():
    """The recorded per-image figures against a fresh measurement, by two instruments: the
    tensors autograd saves (measure_backbone) and the bytes the profiler sees still allocated
    after the forward (slope between batches 2 and 4)."""
    torch.manual_seed(0)
    net = reference_backbone("iresnet50")
    spec = BACKBONES["iresnet50"]
    fp32 = measure_backbone(net, 112, inference_batch_sizes=None)
    assert abs(fp32["activation_bytes"] - spec.activation_bytes) / spec.activation_bytes < 0.005
    mixed = measure_backbone(net, 112, amp_dtype="bfloat16", inference_batch_sizes=None)
    assert abs(mixed["activation_bytes"] - spec.mixed_activation_bytes) / spec.mixed_activation_bytes < 0.005
    # under autocast the saved tensors also hold bf16 copies of the weights: 2 bytes per parameter
    assert abs(mixed["constant_bytes"] - 2 * spec.params) / (2 * spec.params) < 0.01

    def alive_after_forward(b: int) -> int:
        images = torch.rand(b, 3, 112, 112)
        out = []

        def run(mark):
            with mark("forward"):
                out.append(net(images))

        _, sizes, _ = _profile_cpu_step(run)
        return sum(sizes)

    slope = (alive_after_forward(4) - alive_after_forward(2)) / 2
    assert abs(slope - spec.activation_bytes) / spec.activation_bytes < 0.01
    # about 67 MiB per image in fp32: 8.4 GiB for a batch of 128
    assert 60 * MIB < spec.activation_bytes < 75 * MIB


def test_iresnet50_key_encoder_forward_by_hand():
    """No grad: the forward frees as it goes; its peak is four 64-channel 112 x 112 maps per image
    (the stride-1 stem and the first block run at full resolution), 4 * 64 * 112^2 * 4 bytes."""
    torch.manual_seed(0)
    net = reference_backbone("iresnet50")
    measured = measure_backbone(net, 112, batch_sizes=None, inference_batch_sizes=(2, 4))["inference_bytes"]
    assert measured == 4 * 64 * 112 * 112 * 4 == BACKBONES["iresnet50"].inference_bytes
    assert BACKBONES["iresnet50"].mixed_inference_bytes == 4 * 64 * 112 * 112 * 2


# --------------------------------------------------------------------------- the whole step


SMALL = BackboneSpec("test net", params=1_000_000, activation_bytes=3_000_000, mixed_activation_bytes=1_600_000,
                     inference_bytes=400_000, mixed_inference_bytes=200_000, image_size=32)


def test_whole_fc_step_by_hand():
    n, d, b = 50_000, 128, 64
    s = predict_training_step(n, d, b, "fp32", "sgd", "fc", SMALL)
    held_head = 8 * n * d + 4 * b * d + 8 * b  # W, momentum, embeddings, labels
    held_backbone = 8 * 1_000_000 + b * 3 * 32 * 32 * 4  # weights + momentum, fp32 images
    assert s.held == held_head + held_backbone
    # the head's F.normalize backward (5 x 4ND, plus the normalised embeddings) while the
    # backbone's activations of the whole batch are still alive
    step = b * 3_000_000 + 20 * n * d + 4 * b * d
    assert s.peak_phase == "forward and head step" and s.step_peak == step
    assert s.peak == s.held + step
    assert s.parts() == {"head": held_head + 20 * n * d + 4 * b * d, "backbone": held_backbone + b * 3_000_000,
                         "key encoder": 0}
    assert sum(s.peak_terms().values()) == s.peak


def test_whole_attfc_step_mixed_adam_by_hand():
    n, d, b, k = 100_000, 128, 64, 2
    s = predict_training_step(n, d, b, "mixed_bf16", "adam", "attfc", SMALL, num_keys=k)
    q = 30_000  # 0.3 N
    p = 1_000_000
    assert s.head.symbols["Q"] == q and s.head.config["dtype"] == "float32"
    # backbone: fp32 weights, two fp32 Adam moments; key encoder: one fp32 copy, no state
    assert s.terms["backbone_weights"] == 4 * p and s.terms["backbone_optimizer_state"] == 8 * p
    assert s.terms["key_encoder_weights"] == 4 * p
    # under autocast: bf16 copies of the weights and the mixed activations
    assert s.terms["backbone_half_weights"] == 2 * p and s.terms["backbone_activations"] == b * 1_600_000
    # the key encoder's transient forward on K*B images
    assert s.terms["key_image_activations"] == k * b * 200_000
    assert s.phases["keys"] == k * b * 200_000
    # AttFC head (fp32): container Q x (4D + 8), batch: embeddings, K keys per query, labels
    assert s.head.held == q * (4 * d + 8) + (1 + k) * b * d * 4 + 8 * b
    assert s.terms["images"] == (1 + k) * b * 3 * 32 * 32 * 4


def test_attfc_with_a_fixed_container_fits_any_n():
    fixed = dict(embedding_dim=512, batch_size=128, head="attfc", backbone="iresnet50", container_size=100_000)
    small = predict_training_step(10_000, **fixed)
    huge = predict_training_step(10_000_000, **fixed)
    assert small.peak == huge.peak  # no W, a fixed Q: nothing grows with N
    assert training_step_boundary(24 * GiB, **fixed) is None
    grows = predict_training_step(10_000_000, 512, 128, head="attfc").peak
    assert grows > huge.peak  # Q = 0.3 N: 3 M container entries


def test_whole_step_against_the_cpu_measurement():
    """predict_training_step with the small backbone measured now (measure_backbone) against
    memory.step.measure_model_step: train's model, SGD (momentum 0.9, weight decay 5e-4), one
    steady-state step measured by the profiler on the CPU."""
    from attfc_lite.memory.step import measure_model_step
    from attfc_lite.train import TrainConfig

    torch.manual_seed(0)
    net = reference_backbone("small", 128, 32)
    spec = backbone_spec("small", net, 32, batch_sizes=(8, 16), inference_batch_sizes=(32, 64))
    for head, n in (("fc", 2_000), ("fc", 20_000), ("partial_fc", 20_000), ("attfc", 20_000)):
        config = TrainConfig(head=head, num_classes=n, batch_size=64, image_size=32, backbone="small",
                             embedding_dim=128, device="cpu")
        measured = measure_model_step(config, device="cpu", warmup_steps=1)
        pred = predict_training_step(n, 128, 64, "fp32", "sgd", head, spec, momentum=0.9, weight_decay=5e-4,
                                     num_keys=config.num_keys)
        error = (pred.peak - measured["peak_bytes"]) / measured["peak_bytes"]
        assert abs(error) < 0.05, (head, n, pred.peak, measured["peak_bytes"], error)


def test_table_lists_only_the_terms_of_the_head_unless_asked():
    from attfc_lite.memory import predict_memory

    fc = predict_memory(1000, 512, 128)
    short, full = fc.table("KiB"), fc.table("KiB", all_terms=True)
    assert "container_logits" not in short and "attention_temporaries" not in short
    assert "container_logits" in full and "normalize_backward" in short
    assert "o*R*D*e" in short  # the optimizer's copies are o, not m (the margin's letter)
