"""Check functions for the lessons' exercises: each prints right / close / wrong.

They print and return nothing, so a notebook cell shows just the verdict line.

The expected values are computed here, from the library, so the notebooks never show the
solution before the learner has tried. `None` means "not answered yet".
"""
from __future__ import annotations

import math

import torch

from .utils import check


def _answered(name: str, answer) -> bool:
    if answer is None:
        print(f"{name}: not answered yet (replace None with your answer)")
        return False
    return True


# -- lesson 00 ---------------------------------------------------------------------------
def check_quality(answer, identity: int = 42, image: int = 3, seed: int = 0) -> None:
    """Exercise 00.1: the ground-truth quality of one image, found without rendering it."""
    from .faces import FaceWorld

    if not _answered("quality", answer):
        return
    expected = float(FaceWorld(seed).quality(torch.tensor([identity]), torch.tensor([image]))[0])
    check("quality", answer, expected, rtol=1e-4, atol=1e-5)


def check_good_images(answer, identity: int = 7, images: int = 100, threshold: float = 0.8, seed: int = 0) -> None:
    """Exercise 00.2: how many of an identity's first images have quality above a threshold."""
    from .faces import FaceWorld

    if not _answered("count", answer):
        return
    q = FaceWorld(seed).quality(torch.full((images,), identity), torch.arange(images))
    check("count", answer, int((q > threshold).sum()), rtol=0, atol=0, close_factor=0)


# -- lesson 01 ---------------------------------------------------------------------------
def check_arcface_logit(answer, cos: float = 0.8, s: float = 64.0, m: float = 0.5) -> None:
    """Exercise 01.1: the ArcFace target logit s * cos(theta + m) for a given cos(theta)."""
    if not _answered("ArcFace logit", answer):
        return
    check("ArcFace logit", answer, s * math.cos(math.acos(cos) + m), rtol=1e-4, atol=1e-4)


def check_fc_parameters(answer, num_classes: int = 93_431, embedding_dim: int = 512) -> None:
    """Exercise 01.2: parameters of the FC head for MS1MV3 (one D-dim centre per identity)."""
    if not _answered("FC parameters", answer):
        return
    check("FC parameters", answer, num_classes * embedding_dim, rtol=0, atol=0, close_factor=0)


def check_pair_accuracy(answer, scores, is_same, threshold: float) -> None:
    """Exercise 01.3: accuracy of the rule 'same identity if score > threshold'."""
    if not _answered("accuracy", answer):
        return
    scores, is_same = torch.as_tensor(scores), torch.as_tensor(is_same, dtype=torch.bool)
    expected = float(((scores > threshold) == is_same).float().mean())
    check("accuracy", answer, expected, rtol=1e-6, atol=1e-9)


# -- lesson 02 ---------------------------------------------------------------------------
def check_training_state_bytes(answer, num_classes: int = 2_059_906, embedding_dim: int = 512) -> None:
    """Exercise 02.1: bytes of W, its gradient and the SGD momentum in float32."""
    from .memory import predict_memory

    if not _answered("training state", answer):
        return
    bd = predict_memory(num_classes, embedding_dim, 128)
    expected = bd.terms["class_centres"] + bd.terms["centre_grad"] + bd.terms["optimizer_state"]
    check("training state", answer, expected, rtol=0, atol=0, close_factor=0)


def check_fit_boundary(answer, device_gib: float = 24.0, embedding_dim: int = 512, batch_size: int = 128) -> None:
    """Exercise 02.2: the largest number of identities whose FC step fits the device."""
    from .memory import predicted_boundary

    if not _answered("largest N", answer):
        return
    expected = predicted_boundary(int(device_gib * 2**30), embedding_dim=embedding_dim, batch_size=batch_size)
    check("largest N", answer, expected, rtol=1e-4, atol=0)


def check_logits_batch(answer, num_classes: int = 100_000, embedding_dim: int = 512) -> None:
    """Exercise 02.3: the smallest batch from which a logits phase sets the peak."""
    from .memory import predict_memory

    if not _answered("batch size", answer):
        return
    logits_phases = ("forward", "backward: logits")
    expected = next(b for b in range(1, 8 * embedding_dim)
                    if predict_memory(num_classes, embedding_dim, b).peak_phase in logits_phases)
    check("batch size", answer, expected, rtol=0, atol=0, close_factor=0)


# -- lesson 03 ---------------------------------------------------------------------------
def check_partial_fc_columns(answer, num_classes: int = 1_000_000, sample_rate: float = 0.1) -> None:
    """Exercise 03.1: logit columns per Partial FC step (a batch of at most a few hundred identities)."""
    from .partial_fc import PartialFC

    if not _answered("logit columns", answer):
        return
    with torch.device("meta"):
        expected = PartialFC(8, num_classes, sample_rate=sample_rate).num_sample
    check("logit columns", answer, expected, rtol=0, atol=0, close_factor=0)


def check_unsampled_drift(answer, momentum: float = 0.9, steps: int = 2) -> None:
    """Exercise 03.2: how far an unsampled centre moves in `steps` steps, in units of lr * buffer."""
    if not _answered("drift", answer):
        return
    expected = sum(momentum ** (k + 1) for k in range(steps))  # each step: buffer *= momentum, w -= lr * buffer
    check("drift", answer, expected, rtol=1e-3, atol=1e-3, close_factor=10)


# -- lesson 04 ---------------------------------------------------------------------------
def check_ema_value(answer, start: float = 1.0, target: float = 3.0, momentum: float = 0.9, steps: int = 2) -> None:
    """Exercise 04.1: a parameter of encoder_k after `steps` EMA steps towards a fixed encoder_q."""
    if not _answered("theta_k", answer):
        return
    value = start
    for _ in range(steps):
        value = momentum * value + (1 - momentum) * target
    check("theta_k", answer, value, rtol=1e-4, atol=1e-6, close_factor=10)


def check_ema_half_life(answer, momentum: float = 0.99) -> None:
    """Exercise 04.2: steps after which a step's weight in the average has halved: m^n <= 1/2."""
    if not _answered("half-life", answer):
        return
    check("half-life", answer, math.ceil(math.log(0.5) / math.log(momentum)), rtol=0, atol=0, close_factor=0)


# -- lesson 05 ---------------------------------------------------------------------------
def check_attention_weight(answer, cosines=(0.8, 0.4), temperature: float = 1.0) -> None:
    """Exercise 05.1: the attention weight of the first key: softmax of the cosines / temperature."""
    if not _answered("weight", answer):
        return
    exps = [math.exp(c / temperature) for c in cosines]
    check("weight", answer, exps[0] / sum(exps), rtol=1e-3, atol=1e-4, close_factor=10)


def check_weight_ratio(answer, temperature: float = 0.5) -> None:
    """Exercise 05.2: the largest possible ratio of two keys' weights: cosines differ by at most 2."""
    if not _answered("ratio", answer):
        return
    check("ratio", answer, math.exp(2 / temperature), rtol=1e-3, atol=1e-3, close_factor=10)
