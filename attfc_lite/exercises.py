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


# -- lessons 06-08: checks that give a hint for each common slip, never the expected value ----
def _grade(name: str, answer, expected: float, rtol: float, slips=(), hint: str = "", close_factor: float = 10.0,
           in_bytes: bool = False):
    """Print right / close / wrong for a number, with the tolerance used.

    `slips`: (value, message) pairs, the result of a common mistake and what to look at; an
    answer that matches one gets its message. `in_bytes`: an answer in MiB, GiB, MB or GB is
    told to give bytes. The expected value is never printed.
    Returns the verdict ('right', 'close', 'wrong'), or None when not answered; the check
    functions return nothing, so that a notebook cell shows only the printed line.
    """
    if not _answered(name, answer):
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        print(f"{name}: wrong: expected a number, got {answer!r}")
        return "wrong"
    if not math.isfinite(value):
        print(f"{name}: wrong: {value} is not a finite number")
        return "wrong"
    tol = rtol * abs(expected)
    if abs(value - expected) <= tol:
        print(f"{name}: right " + (f"(within {rtol:.2g} relative)" if rtol else "(exact)"))
        return "right"
    if in_bytes:
        slips = [*slips, *((expected / unit, f"Give the answer in bytes, not in {name_}.")
                           for unit, name_ in ((2 ** 20, "MiB"), (2 ** 30, "GiB"), (1e6, "MB"), (1e9, "GB")))]
    for slip, message in slips:
        if abs(value - slip) <= rtol * abs(slip):
            print(f"{name}: wrong. {message}")
            return "wrong"
    if abs(value - expected) <= close_factor * tol:
        print(f"{name}: close (within {close_factor * rtol:.2g} relative, not {rtol:.2g}): "
              "redo it without rounding the intermediate numbers")
        return "close"
    print(f"{name}: wrong (more than {close_factor * rtol:.2g} relative off). {hint}".rstrip())
    return "wrong"


# -- lesson 06 ---------------------------------------------------------------------------
def check_mean_cosine(answer, single: float = 0.6, k: int = 4):
    """Exercise 06.1: cosine to the centre of the mean of K keys, if one key has `single` and
    the keys' errors are independent: 1 / sqrt(1 + x / K) with x = 1 / single^2 - 1."""
    x = 1 / single ** 2 - 1
    _grade("cosine of the mean", answer, 1 / math.sqrt(1 + x / k), 1e-3, slips=[
        (single, "That is one key's cosine: averaging K keys with independent errors shrinks the error."),
        (single * math.sqrt(k), "A cosine is at most 1: the error shrinks, the cosine does not multiply."),
        (1 / math.sqrt(1 + x / math.sqrt(k)), "The variance of a mean of K independent errors is divided by K, "
                                              "not by the square root of K."),
        (1 / (1 + x / k), "cos = 1 / sqrt(1 + |error|^2) for a unit centre: take the square root."),
    ], hint="Write a key as c + e with |c| = 1 and |e|^2 = x; the mean of K keys is c + (mean of the e), "
            "whose squared length is x / K on average.")


def check_max_weight(answer, k: int = 8, temperature: float = 1.0):
    """Exercise 06.2: the largest weight one of K keys can get: its cosine 1, all others -1."""
    big = math.exp(2 / temperature)
    _grade("largest weight", answer, big / (big + k - 1), 1e-3, slips=[
        (1 / k, "That is the uniform weight 1/K, the smallest possible largest weight."),
        (big / (big + 1), "That is the case of two keys: here there are K of them."),
        (big / (big + k), "The other keys number K - 1, not K."),
        (1.0, "A softmax never gives all the weight to one key at a finite temperature."),
    ], hint="Weights are proportional to exp(cos / T); give one key cosine 1 and the others -1.")


# -- lesson 07 ---------------------------------------------------------------------------
def check_container_bytes(answer, num_classes: int = 2_059_906, ratio: float = 0.1, embedding_dim: int = 512):
    """Exercise 07.1: bytes of a container of floor(ratio N) fp32 centres and their int64 labels."""
    from .attfc import container_capacity

    q = container_capacity(num_classes, ratio)
    _grade("container bytes", answer, q * (4 * embedding_dim + 8), 1e-3, slips=[
        (q * 4 * embedding_dim, "Each entry also carries its identity label, an int64 (8 bytes)."),
        (q * (4 * embedding_dim + 4), "The labels are int64: 8 bytes each (float or int32 labels stop being exact "
                                      "or enough at this scale)."),
        (num_classes * (4 * embedding_dim + 8), "The container holds Q = ratio x N entries, not one per identity."),
        (q * (8 * embedding_dim + 8), "The centres are fp32: 4 bytes per number."),
    ], hint="Q = floor(ratio x N) entries; each is D fp32 numbers and one int64 label.", in_bytes=True)


def check_identities_present(answer, num_classes: int = 1000, capacity: int = 600):
    """Exercise 07.2: expected share of identities with an entry among Q uniformly drawn labels."""
    # 1e-3: the approximation 1 - exp(-Q / N) is right too (0.05 % off at Q / N = 0.6)
    expected = 1 - (1 - 1 / num_classes) ** capacity
    _grade("share present", answer, expected, 1e-3, slips=[
        (capacity / num_classes, "Some identities hold two or more of the Q entries: count each identity once."),
        (100 * expected, "Give a share between 0 and 1, not a percentage."),
        ((1 - 1 / num_classes) ** capacity, "That is the share of identities with no entry."),
    ], hint="One identity misses one entry with probability 1 - 1/N, and all Q entries with (1 - 1/N)^Q.")


# -- lesson 08 ---------------------------------------------------------------------------
def check_attfc_loss(answer, cos_positive: float = 0.8, negatives=((0.3, False), (0.9, True)), s: float = 32.0,
                     m: float = 0.5):
    """Exercise 08.1: the AttFC loss of one query by hand: ArcFace on the GCC column, container
    entries as negatives, the entry of the query's own identity (True) masked."""
    z0 = s * math.cos(math.acos(cos_positive) + m)
    kept = [s * c for c, own in negatives if not own]
    every = [s * c for c, _ in negatives]

    def loss(z, others):
        return math.log(math.exp(z) + sum(math.exp(o) for o in others)) - z

    _grade("loss", answer, loss(z0, kept), 1e-3, slips=[
        (loss(z0, every), "The entry of the query's own identity is masked: it leaves the softmax."),
        (loss(s * cos_positive, kept), "The margin applies to the positive column: s cos(theta + m)."),
        (loss(cos_positive, [c for c, own in negatives if not own]), "Every logit is multiplied by the scale s."),
        (loss(math.cos(math.acos(cos_positive) + m) * s, []), "The container's other entries are the negatives."),
    ], hint="Logits: z0 = s cos(arccos(0.8) + m), then s x cosine for each unmasked entry; loss = "
            "log(sum of exp(logits)) - z0.")


def check_logit_bytes(answer, num_classes: int = 2_059_906, ratio: float = 0.3, batch_size: int = 128):
    """Exercise 08.2: bytes of the fused loss's one B x Q fp32 buffer."""
    from .attfc import container_capacity

    q = container_capacity(num_classes, ratio)
    _grade("buffer bytes", answer, batch_size * q * 4, 1e-3, slips=[
        (batch_size * num_classes * 4, "The columns are the container's Q entries, not all N identities (that is "
                                       "full FC's logits)."),
        (batch_size * q * 8, "fp32: 4 bytes per number."),
        (q * 4, "There is one row per query of the batch."),
    ], hint="B rows, Q = floor(ratio x N) columns, 4 bytes each.", in_bytes=True)


# -- lesson 09 ---------------------------------------------------------------------------
def check_encoder_k_bytes(answer, parameters: int = 43_600_000):
    """Exercise 09.1: what AttFC's key encoder adds to memory for a backbone of `parameters` fp32
    weights: one copy, with no gradient and no optimizer state."""
    _grade("encoder_k bytes", answer, 4 * parameters, 1e-3, slips=[
        (8 * parameters, "encoder_k has no optimizer: no momentum buffer, only its weights."),
        (12 * parameters, "encoder_k gets no gradient and no momentum: it is updated by EMA under no_grad."),
        (2 * parameters, "The weights are fp32: 4 bytes each."),
        (parameters, "Count bytes: 4 per fp32 weight."),
    ], hint="A copy of the backbone's weights, 4 bytes each; nothing else is kept between steps "
            "(BatchNorm buffers are negligible here).", in_bytes=True)


def check_images_per_step(answer, batch_size: int = 128, num_keys: int = 4):
    """Exercise 09.2: images through a backbone (encoder_q or encoder_k) in one AttFC step."""
    _grade("images", answer, batch_size * (1 + num_keys), 0.0, slips=[
        (batch_size * num_keys, "The B queries go through encoder_q too."),
        (batch_size, "Each query also has K key images, embedded by encoder_k."),
        (batch_size * (2 + num_keys), "The backward pass does not embed images again."),
    ], hint="B queries through encoder_q, and K key images for each of them through encoder_k.")
