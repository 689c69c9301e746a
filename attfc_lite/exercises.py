"""Check functions for the lessons' exercises, and their worked solutions.

Each `check_...` function prints one line, ``<what>: right``, ``close`` or ``wrong``, and returns
nothing, so a notebook cell shows just that line. `None` means "not answered yet".
`solution("05.2")` prints a worked solution of exercise 2 of lesson 05 and then runs its check.

Tolerance policy, the same for every exercise: a real number is right within 0.1 % of the expected
value (relative) and close within 1 %; a count, a number of bytes or any other whole number is right
only when exact, and close within 1 %; anything further off is wrong. (Four significant digits are
always enough for a real number; rounding to three can make it close.)

What a check never does: print the expected value, or anything from which it can be read off, such
as the difference between the answer and it. Instead, an answer that matches a common slip (a
gradient forgotten, bytes per float, MiB instead of bytes, degrees instead of radians, a percentage
instead of a share...) is told what to look at; a slip matches within 1 % of its own value, but
never more than halfway to the expected value. Any other wrong answer gets a short hint on the method.

An answer can be a Python number, a 0-d tensor, or a one-element tensor, array, list or tuple.
The expected values are computed here, from the library or from the exercise's numbers, so the
notebooks never show a solution before the learner asks for it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch

RIGHT_RTOL = 1e-3  #: relative tolerance of a right real number
CLOSE_RTOL = 1e-2  #: relative tolerance of a close answer (real or whole)

TOLERANCE_POLICY = ("Real numbers: right within 0.1 % of the expected value, close within 1 %. "
                    "Counts, bytes and other whole numbers: right only when exact, close within 1 %. "
                    "Anything further off is wrong.")


@dataclass(frozen=True)
class Slip:
    """A common mistake: the value it leads to and what to look at."""

    value: float
    message: str


@dataclass(frozen=True)
class Spec:
    """What one check compares an answer with. `exact`: a whole number, right only when equal.
    `in_bytes`: answers in KiB, MiB, GiB, kB, MB, GB or bits are told to give bytes.
    `whole_hint`: said when a whole-number answer is close but not whole."""

    name: str
    expected: float
    exact: bool = False
    slips: tuple[Slip, ...] = ()
    hint: str = ""
    in_bytes: bool = False
    whole_hint: str = "The answer is a whole number: check how you rounded."

    def all_slips(self) -> tuple[Slip, ...]:
        """The listed slips and, with `in_bytes`, the unit slips, less those that would be right."""
        slips = list(self.slips)
        if self.in_bytes:
            units = ((2 ** 10, "KiB"), (2 ** 20, "MiB"), (2 ** 30, "GiB"), (1e3, "kB"), (1e6, "MB"), (1e9, "GB"))
            slips += [Slip(self.expected / unit, f"Give the answer in bytes, not in {name}.") for unit, name in units]
            slips.append(Slip(8 * self.expected, "That is a number of bits: give bytes (8 bits each)."))
        if self.exact:
            return tuple(s for s in slips if s.value != self.expected)
        return tuple(s for s in slips if not _near(s.value, self.expected, 2 * RIGHT_RTOL))


def _near(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * abs(b)


def _slips(*pairs) -> tuple[Slip, ...]:
    return tuple(Slip(float(v), m) for v, m in pairs)


def _as_number(answer) -> float:
    """One float from a number, a 0-d or one-element tensor, array, list or tuple; ValueError
    (with what to fix) otherwise."""
    if isinstance(answer, bool):
        raise ValueError(f"expected a number, got {answer!r}")
    if isinstance(answer, str):
        try:
            return float(answer.replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"expected a number, got the text {answer[:40]!r}") from None
    if isinstance(answer, numbers.Real):
        return float(answer)
    try:
        if isinstance(answer, torch.Tensor):
            flat = answer.detach().to("cpu", torch.float64).reshape(-1)
        else:
            import numpy as np

            flat = torch.from_numpy(np.asarray(answer, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"expected a number, got {type(answer).__name__} {str(answer)[:40]}") from None
    if flat.numel() != 1:
        raise ValueError(f"expected one number, got {flat.numel()} numbers")
    return float(flat[0])


def _grade(answer, spec: Spec) -> str | None:
    """Print right / close / wrong for `answer` against `spec` (see the module docstring for the
    policy) and return the verdict, or None when not answered. Never prints the expected value."""
    name = spec.name
    if answer is None:
        print(f"{name}: not answered yet (replace None with your answer)")
        return None
    try:
        value = _as_number(answer)
    except ValueError as err:
        print(f"{name}: wrong: {err}")
        return "wrong"
    if not math.isfinite(value):
        print(f"{name}: wrong: {value} is not a finite number")
        return "wrong"
    expected = float(spec.expected)
    if (value == expected) if spec.exact else _near(value, expected, RIGHT_RTOL):
        print(f"{name}: right " + ("(exact)" if spec.exact else "(within 0.1 %)"))
        return "right"
    close = _near(value, expected, CLOSE_RTOL)
    matched = None
    for slip in spec.all_slips():
        window = min(CLOSE_RTOL * abs(slip.value), abs(slip.value - expected) / 2)
        distance = abs(value - slip.value)
        if distance <= window and (matched is None or distance < abs(value - matched.value)):
            matched = slip
    if matched is not None:
        print(f"{name}: {'close' if close else 'wrong'}. {matched.message}")
        return "close" if close else "wrong"
    # A right method rounded to one or two significant digits (not for small counts, where that is an off-by-one)
    if (not spec.exact or abs(expected) >= 1000) and value != 0 \
            and any(value == float(f"{expected:.{k}g}") for k in (1, 2)) \
            and not _near(value, expected, RIGHT_RTOL):
        print(f"{name}: {'close' if close else 'wrong'}: your method may be right, but you rounded too early: "
              "give four significant digits")
        return "close" if close else "wrong"
    if close and spec.exact:
        why = spec.whole_hint if value != round(value) else "check the small terms and the rounding."
        print(f"{name}: close (within 1 %, but a whole number is right only when exact): {why}")
        return "close"
    if close:
        print(f"{name}: close (within 1 %, not 0.1 %): redo it without rounding the intermediate numbers, "
              "and give four significant digits")
        return "close"
    print(f"{name}: wrong (more than 1 % off). {spec.hint}".rstrip())
    return "wrong"


# -- lesson 00 ---------------------------------------------------------------------------
def _quality(world, identity: int, image: int) -> float:
    return float(world.quality(torch.tensor([identity]), torch.tensor([image]))[0])


def _spec_quality(identity: int = 42, image: int = 3, seed: int = 0) -> Spec:
    from .faces import FaceWorld

    world = FaceWorld(seed)
    q = _quality(world, identity, image)
    pairs = [(1 - q, "That is the severity of the degradation: quality = 1 - severity."),
             (100 * q, "Give the quality as a number between 0 and 1, not a percentage.")]
    if identity != image:
        pairs.append((_quality(world, image, identity), "Identity and image are swapped: `world.quality` takes "
                                                        "the identities first, then the image indices."))
    if image >= 1:
        pairs.append((_quality(world, identity, image - 1), "Image indices count from 0: image 3 is index 3, "
                                                            "not the third image."))
    return Spec("quality", q, slips=_slips(*pairs),
                hint=f"Ask `FaceWorld(seed={seed}).quality` for one identity and one image index (tensors of one "
                     "element each) and take the number it returns.")


def check_quality(answer, identity: int = 42, image: int = 3, seed: int = 0) -> None:
    """Exercise 00.1: the ground-truth quality of one image, found without rendering it."""
    _grade(answer, _spec_quality(identity, image, seed))


def _spec_good_images(identity: int = 7, images: int = 100, threshold: float = 0.8, seed: int = 0) -> Spec:
    from .faces import FaceWorld

    world = FaceWorld(seed)
    q = world.quality(torch.full((images,), identity), torch.arange(images))
    count = int((q > threshold).sum())
    shifted = world.quality(torch.full((images,), identity), torch.arange(1, images + 1))
    return Spec("count", count, exact=True, slips=_slips(
        (images - count, f"That counts the images at or below {threshold}: count those above it."),
        (count / images, "Give the number of images, not a share of them."),
        (int(((1 - q) > threshold).sum()), "That compares the severity with the threshold: quality = 1 - severity."),
        (int((shifted > threshold).sum()), f"The first {images} images are the indices 0 to {images - 1}."),
    ), hint=f"Get all {images} qualities in one call of `world.quality` (identity {identity} repeated, image "
            f"indices 0 to {images - 1}) and count those above {threshold}.")


def check_good_images(answer, identity: int = 7, images: int = 100, threshold: float = 0.8, seed: int = 0) -> None:
    """Exercise 00.2: how many of an identity's first images have quality above a threshold."""
    _grade(answer, _spec_good_images(identity, images, threshold, seed))


# -- lesson 01 ---------------------------------------------------------------------------
def _spec_arcface_logit(cos: float = 0.8, s: float = 64.0, m: float = 0.5) -> Spec:
    theta = math.acos(cos)
    return Spec("ArcFace logit", s * math.cos(theta + m), slips=_slips(
        (s * (cos - m), "That is CosFace, s (cos θ - m): ArcFace adds m to the angle θ = arccos(cos θ)."),
        (math.cos(theta + m), "Multiply by the scale s."),
        (s * cos, "Add the margin m to the angle of the target class."),
        (s * math.cos(theta - m), "The margin makes the target harder: the angle grows by m."),
        (s * math.cos(theta + math.radians(m)), "m is in radians: add it to θ in radians, not as degrees."),
        (s * math.cos(math.degrees(theta) + m), "θ went into math.cos in degrees: math.acos and math.cos "
                                                "both work in radians."),
    ), hint="θ = arccos(cos θ) in radians; the target logit is s · cos(θ + m).")


def check_arcface_logit(answer, cos: float = 0.8, s: float = 64.0, m: float = 0.5) -> None:
    """Exercise 01.1: the ArcFace target logit s * cos(theta + m) for a given cos(theta)."""
    _grade(answer, _spec_arcface_logit(cos, s, m))


def _spec_fc_parameters(num_classes: int = 93_431, embedding_dim: int = 512) -> Spec:
    n, d = num_classes, embedding_dim
    return Spec("FC parameters", n * d, exact=True, slips=_slips(
        (n * d + n, "The FC head of face recognition has no bias: W alone, one centre per identity."),
        (n * d * 4, "Count parameters, not bytes."),
        (n * d / 1e6, "Give the number itself, not in millions."),
        (n + d, "W is a matrix: N rows of D numbers each."),
        (2 * n * d, "Count the parameters of W only: its gradient is not a parameter."),
    ), hint="W has one row, a class centre of embedding_dim numbers, per identity.")


def check_fc_parameters(answer, num_classes: int = 93_431, embedding_dim: int = 512) -> None:
    """Exercise 01.2: parameters of the FC head for MS1MV3 (one D-dim centre per identity)."""
    _grade(answer, _spec_fc_parameters(num_classes, embedding_dim))


# Seven pairs, so that the accuracy (5/7) differs from the TAR (3/4) and from the FAR (1/3).
PAIR_SCORES = (0.9, 0.2, 0.6, 0.4, 0.7, 0.1, 0.8)  #: exercise 01.3's similarity scores
PAIR_SAME = (True, False, True, True, False, False, True)  #: exercise 01.3's genuine (True) and impostor pairs


def _spec_pair_accuracy(scores=PAIR_SCORES, is_same=PAIR_SAME, threshold: float = 0.5) -> Spec:
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    is_same = torch.as_tensor(is_same, dtype=torch.bool).reshape(-1)
    if scores.shape != is_same.shape:
        raise ValueError(f"scores and is_same must have the same length, got {scores.numel()} and {is_same.numel()}")
    correct = int(((scores > threshold) == is_same).sum())
    n = scores.numel()
    accuracy = correct / n
    pairs = [(correct, "Give the share of the pairs the rule gets right, not their number."),
             (100 * accuracy, "Give a share between 0 and 1, not a percentage."),
             (1 - accuracy, "That is the error rate: the share of pairs the rule gets wrong.")]
    if is_same.any():
        pairs.append((float((scores[is_same] > threshold).double().mean()),
                      "That is the share of genuine pairs accepted: accuracy counts the impostor pairs rejected too."))
    pairs.append((float(((scores >= threshold) == is_same).double().mean()),
                  f"The rule says same person only if the score is strictly above {threshold}."))
    return Spec("accuracy", accuracy, slips=_slips(*pairs),
                hint=f"Decide 'same' for each pair whose score is above {threshold}, compare with is_same, and "
                     "take the share of pairs where the two agree.")


def check_pair_accuracy(answer, scores=PAIR_SCORES, is_same=PAIR_SAME, threshold: float = 0.5) -> None:
    """Exercise 01.3: accuracy of the rule 'same identity if score > threshold'."""
    _grade(answer, _spec_pair_accuracy(scores, is_same, threshold))


# -- lesson 02 ---------------------------------------------------------------------------
def _spec_training_state_bytes(num_classes: int = 2_059_906, embedding_dim: int = 512) -> Spec:
    nd, e = num_classes * embedding_dim, 4
    return Spec("training state", 3 * nd * e, exact=True, in_bytes=True, slips=_slips(
        (2 * nd * e, "Three tensors: W, its gradient and the momentum buffer; one of them is missing."),
        (nd * e, "That is W alone: add its gradient and the SGD momentum buffer."),
        (3 * nd, "Count bytes: a float32 number takes 4 bytes."),
        (3 * nd * 8, "float32 takes 4 bytes per number, not 8."),
        (4 * nd * e, "SGD with momentum keeps one buffer per parameter (Adam keeps two)."),
    ), hint="W, W.grad and the momentum are each an N x D float32 tensor.")


def check_training_state_bytes(answer, num_classes: int = 2_059_906, embedding_dim: int = 512) -> None:
    """Exercise 02.1: bytes of W, its gradient and the SGD momentum in float32."""
    _grade(answer, _spec_training_state_bytes(num_classes, embedding_dim))


def _spec_fit_boundary(device_gib: float = 24.0, embedding_dim: int = 512, batch_size: int = 128) -> Spec:
    from .memory import predicted_boundary

    d, b, e = embedding_dim, batch_size, 4
    budget = int(device_gib * 2 ** 30)
    batch = 2 * b * d * e + 8 * b  # the embeddings held and those of the phase, and the int64 labels
    return Spec("largest N", predicted_boundary(budget, embedding_dim=d, batch_size=b), exact=True, slips=_slips(
        (predicted_boundary(int(device_gib * 1e9), embedding_dim=d, batch_size=b),
         "24 GiB is 24 x 2**30 bytes; 24 x 10**9 bytes is 24 GB."),
        (budget // (3 * d * e), "W, W.grad and the momentum are only part of the peak: F.normalize(W)'s backward "
                                "adds four more N x D tensors at the same time."),
        ((budget - b * d * e) // (5 * d * e), "That is the backward phase alone: add what is held between steps "
                                              "(W, the momentum and the batch)."),
        ((budget - batch) // (7 * d), "Count bytes: 4 per float32 number."),
        ((budget - batch) // (3 * d * e + 2 * e + 4 * b * e), "With B < D the forward (logits) phase is not the "
                                                              "largest: the F.normalize(W) backward is."),
        (budget // (7 * d * e), "Almost: the batch takes its share of the budget too: what is held with it, and its "
                                 "gradient during the step."),
        (1_141_050, "That is the whole training step with an iResNet-50 backbone (the widget's table); this "
                    "exercise asks for the FC head's step alone."),
    ), hint="The peak is what is held (W, the momentum, the batch) plus the largest phase (here the F.normalize(W) "
            "backward: five N x D tensors at once, plus a B x D gradient); set it equal to the budget "
            "and solve for N.", whole_hint="N is a whole number, and its peak must fit in the budget.")


def check_fit_boundary(answer, device_gib: float = 24.0, embedding_dim: int = 512, batch_size: int = 128) -> None:
    """Exercise 02.2: the largest number of identities whose FC step fits the device."""
    _grade(answer, _spec_fit_boundary(device_gib, embedding_dim, batch_size))


def _spec_logits_batch(num_classes: int = 100_000, embedding_dim: int = 512) -> Spec:
    from .memory import predict_memory

    d = embedding_dim
    logits_phases = ("forward", "backward: logits")
    expected = next(b for b in range(1, 8 * d) if predict_memory(num_classes, d, b).peak_phase in logits_phases)
    boundary = ("Near the boundary: compare the forward and the backward: centres phases exactly, the norms' 2 N e "
                "included, and solve the inequality for B rather than trying values.")
    return Spec("batch size", expected, exact=True, slips=_slips(
        (128, "That is the lesson's batch, where the F.normalize backward sets the peak: grow B."),
        (expected - 1, boundary), (expected + 1, boundary),
        (math.ceil(5 * d / 4), "The forward phase also holds F.normalize(W), an N x D copy: compare whole phases."),
        (2 * d, "The logits phases hold four B x N buffers, not two."),
    ), hint="Write the forward phase and the backward: centres phase of lesson 02's table as functions of B, and "
            "find the smallest whole B for which the forward is at least as large.")


def check_logits_batch(answer, num_classes: int = 100_000, embedding_dim: int = 512) -> None:
    """Exercise 02.3: the smallest batch from which a logits phase sets the peak."""
    _grade(answer, _spec_logits_batch(num_classes, embedding_dim))


# -- lesson 03 ---------------------------------------------------------------------------
def _spec_partial_fc_columns(num_classes: int = 1_000_000, sample_rate: float = 0.1, batch_size: int = 128) -> Spec:
    from .partial_fc import PartialFC

    with torch.device("meta"):
        s = PartialFC(8, num_classes, sample_rate=sample_rate).num_sample
    return Spec("logit columns", s, exact=True, slips=_slips(
        (num_classes, "That is full FC: Partial FC computes logits for a sample of the centres only."),
        (batch_size, "The positives are only part of the sample: S = max(ceil(r N), positives)."),
        (s + batch_size, "The batch's positives are among the S sampled centres, not added to them."),
        (batch_size * s, "Count columns, not the entries of the B x S logits."),
    ), hint="S = max(ceil(r N), number of distinct positives), and a batch of 128 has at most 128 identities.")


def check_partial_fc_columns(answer, num_classes: int = 1_000_000, sample_rate: float = 0.1) -> None:
    """Exercise 03.1: logit columns per Partial FC step (a batch of at most a few hundred identities)."""
    _grade(answer, _spec_partial_fc_columns(num_classes, sample_rate))


def _spec_unsampled_drift(momentum: float = 0.9, steps: int = 2) -> Spec:
    m = momentum
    moves = [m ** (k + 1) for k in range(steps)]  # each step: buffer *= m (zero gradient), w -= lr * buffer
    return Spec("drift", sum(moves), slips=_slips(
        (0, "With a zero gradient the momentum buffer still moves the centre."),
        (steps, "The buffer decays: buf = 0.9 buf + 0 before each update."),
        (1 + sum(moves[:-1]), "The buffer is multiplied by 0.9 before the first update too (buf = 0.9 buf + grad, "
                              "then w -= lr buf)."),
        (moves[-1], "Add the moves of all the steps, not the last one alone."),
    ), hint="Each step: buf = 0.9 buf (the gradient is 0), then the centre moves by lr buf. Add the moves.")


def check_unsampled_drift(answer, momentum: float = 0.9, steps: int = 2) -> None:
    """Exercise 03.2: how far an unsampled centre moves in `steps` steps, in units of lr * buffer."""
    _grade(answer, _spec_unsampled_drift(momentum, steps))


# -- lesson 04 ---------------------------------------------------------------------------
def _spec_ema_value(start: float = 1.0, target: float = 3.0, momentum: float = 0.9, steps: int = 2) -> Spec:
    m = momentum

    def ema(weight_k: float, n: int) -> float:
        value = start
        for _ in range(n):
            value = weight_k * value + (1 - weight_k) * target
        return value

    return Spec("theta_k", ema(m, steps), slips=_slips(
        (ema(m, 1), "That is after one step: apply the EMA once per step."),
        (ema(1 - m, steps), "θ_k ← m θ_k + (1 - m) θ_q: the momentum m weights the key encoder's own value."),
        (start + steps * (1 - m) * (target - start), "Each step moves a fraction 1 - m of the remaining gap, and the "
                                                     "gap shrinks: later steps move less."),
        (target, "θ_k does not jump to θ_q: it moves a fraction 1 - m of the way each step."),
    ), hint="Apply θ_k ← m θ_k + (1 - m) θ_q once per step, starting from θ_k = 1, with θ_q = 3.")


def check_ema_value(answer, start: float = 1.0, target: float = 3.0, momentum: float = 0.9, steps: int = 2) -> None:
    """Exercise 04.1: a parameter of encoder_k after `steps` EMA steps towards a fixed encoder_q."""
    _grade(answer, _spec_ema_value(start, target, momentum, steps))


def _spec_ema_half_life(momentum: float = 0.99) -> Spec:
    m = momentum
    n = math.ceil(math.log(0.5) / math.log(m))
    approx = math.ceil(math.log(2) / (1 - m))
    rounding = "m^n ≤ 1/2 must hold at your n: check it there."
    return Spec("half-life", n, exact=True, slips=_slips(
        (n - 1, rounding),
        (1 / (1 - m), "1 / (1 - m) is how many steps the average spans, not the half-life."),
        (0.5 / (1 - m), "The weight shrinks by a factor m per step, not by a fixed amount 1 - m."),
        *((approx, "ln 2 / (1 - m) only approximates ln(1/2) / ln(m) (ln m is about -(1 - m)): use the exact "
                   "one."),) * (approx not in (n, n - 1)),
    ), hint="Solve m^n ≤ 1/2 with logarithms, n ≥ ln(1/2) / ln(m), and take the smallest whole n.",
        whole_hint="n is a whole number of steps: " + rounding)


def check_ema_half_life(answer, momentum: float = 0.99) -> None:
    """Exercise 04.2: steps after which a step's weight in the average has halved: m^n <= 1/2."""
    _grade(answer, _spec_ema_half_life(momentum))


# -- lesson 05 ---------------------------------------------------------------------------
def _spec_attention_weight(cosines=(0.8, 0.4), temperature: float = 1.0) -> Spec:
    exps = [math.exp(c / temperature) for c in cosines]
    w = exps[0] / sum(exps)
    pairs = [(cosines[0] / sum(cosines), "Softmax: exponentiate the cosines (divided by T) before normalising."),
             (exps[0], "Divide by the sum over the keys: the weights sum to 1."),
             (1 / len(cosines), "The key with the larger cosine gets the larger weight.")]
    if len(cosines) == 2:
        pairs.append((1 - w, "That is the second key's weight."))
    return Spec("weight", w, slips=_slips(*pairs),
                hint="w_1 = exp(c_1 / T) / (sum over the keys of exp(c_j / T)).")


def check_attention_weight(answer, cosines=(0.8, 0.4), temperature: float = 1.0) -> None:
    """Exercise 05.1: the attention weight of the first key: softmax of the cosines / temperature."""
    _grade(answer, _spec_attention_weight(cosines, temperature))


def _spec_weight_ratio(temperature: float = 0.5) -> Spec:
    t = temperature
    return Spec("ratio", math.exp(2 / t), slips=_slips(
        (math.exp(2), "Either T was left out or the cosines' largest difference was taken as 1: the ratio is "
                      "exp((c_i - c_j) / T), and c_i - c_j can reach 2."),
        (math.exp(2 * t), "Divide by the temperature, do not multiply."),
        (2 / t, "The weights are exponentials: their ratio is exp of the cosine difference over T."),
        (math.exp(-2 / t), "Put the larger weight on top: the largest ratio is at least 1."),
    ), hint="w_i / w_j = exp((c_i - c_j) / T), and cosines lie in [-1, 1].")


def check_weight_ratio(answer, temperature: float = 0.5) -> None:
    """Exercise 05.2: the largest possible ratio of two keys' weights: cosines differ by at most 2."""
    _grade(answer, _spec_weight_ratio(temperature))


# -- lesson 06 ---------------------------------------------------------------------------
def _spec_mean_cosine(single: float = 0.6, k: int = 4) -> Spec:
    x = 1 / single ** 2 - 1
    return Spec("cosine of the mean", 1 / math.sqrt(1 + x / k), slips=_slips(
        (single, "That is one key's cosine: averaging K keys with independent errors shrinks the error."),
        (single * math.sqrt(k), "A cosine is at most 1: the error shrinks, the cosine does not multiply."),
        (1 / math.sqrt(1 + x / math.sqrt(k)), "The variance of a mean of K independent errors is divided by K, "
                                              "not by the square root of K."),
        (1 / (1 + x / k), "cos = 1 / sqrt(1 + |error|^2) for a unit centre: take the square root. (If you "
                          "typed the measured mean at K = 4 from the table: the exercise asks what independent "
                          "errors would predict, to compare the measurement with.)"),
    ), hint="Write a key as c + e with |c| = 1 and |e|^2 = x; the mean of K keys is c + (mean of the e), "
            "whose squared length is x / K on average.")


def check_mean_cosine(answer, single: float = 0.6, k: int = 4) -> None:
    """Exercise 06.1: the cosine to the centre expected of the mean of K keys when one key has
    `single` and the keys' errors are independent (the formula is in `solution("06.1")`)."""
    _grade(answer, _spec_mean_cosine(single, k))


def _spec_max_weight(k: int = 8, temperature: float = 1.0) -> Spec:
    big = math.exp(2 / temperature)
    return Spec("largest weight", big / (big + k - 1), slips=_slips(
        (1 / k, "That is the uniform weight 1/K, the smallest possible largest weight."),
        (big / (big + 1), "That is the case of two keys: here there are K of them."),
        (big / (big + k), "The other keys number K - 1, not K."),
        (1.0, "A softmax never gives all the weight to one key at a finite temperature."),
        (math.e / (math.e + k - 1), "Give the other keys the lowest cosine, -1, not 0."),
    ), hint="Weights are proportional to exp(cos / T); give one key cosine 1 and the others -1.")


def check_max_weight(answer, k: int = 8, temperature: float = 1.0) -> None:
    """Exercise 06.2: the largest attention weight one of K keys can get at `temperature`."""
    _grade(answer, _spec_max_weight(k, temperature))


# -- lesson 07 ---------------------------------------------------------------------------
def _spec_container_bytes(num_classes: int = 2_059_906, ratio: float = 0.1, embedding_dim: int = 512) -> Spec:
    from .attfc import container_capacity

    q, d = container_capacity(num_classes, ratio), embedding_dim
    return Spec("container bytes", q * (4 * d + 8), exact=True, in_bytes=True, slips=_slips(
        (q * 4 * d, "Each entry also carries its identity label, an int64 (8 bytes)."),
        (q * (4 * d + 4), "The labels are int64: 8 bytes each (float or int32 labels stop being exact or enough at "
                          "this scale)."),
        (num_classes * (4 * d + 8), "The container holds Q = ratio x N entries, not one per identity."),
        (q * (8 * d + 8), "The centres are fp32: 4 bytes per number."),
        (q * (d + 1), "Count bytes: 4 per fp32 number and 8 per int64 label."),
    ), hint="Q = floor(ratio x N) entries; each is D fp32 numbers and one int64 label.")


def check_container_bytes(answer, num_classes: int = 2_059_906, ratio: float = 0.1, embedding_dim: int = 512) -> None:
    """Exercise 07.1: bytes of a container of floor(ratio N) fp32 centres and their int64 labels."""
    _grade(answer, _spec_container_bytes(num_classes, ratio, embedding_dim))


def _spec_identities_present(num_classes: int = 1000, capacity: int = 600) -> Spec:
    # 0.1 %: the approximation 1 - exp(-Q / N) is right too (0.04 % off at Q / N = 0.6)
    expected = 1 - (1 - 1 / num_classes) ** capacity
    return Spec("share present", expected, slips=_slips(
        (capacity / num_classes, "Some identities hold two or more of the Q entries: count each identity once."),
        (100 * expected, "Give a share between 0 and 1, not a percentage."),
        ((1 - 1 / num_classes) ** capacity, "That is the share of identities with no entry."),
    ), hint="One identity misses one entry with probability 1 - 1/N, and all Q entries with (1 - 1/N)^Q.")


def check_identities_present(answer, num_classes: int = 1000, capacity: int = 600) -> None:
    """Exercise 07.2: expected share of identities with an entry among Q uniformly drawn labels."""
    _grade(answer, _spec_identities_present(num_classes, capacity))


# -- lesson 08 ---------------------------------------------------------------------------
def _spec_attfc_loss(cos_positive: float = 0.8, negatives=((0.3, False), (0.9, True)), s: float = 32.0,
                     m: float = 0.5) -> Spec:
    z0 = s * math.cos(math.acos(cos_positive) + m)
    kept = [s * c for c, own in negatives if not own]
    every = [s * c for c, _ in negatives]

    def loss(z, others):
        return math.log(math.exp(z) + sum(math.exp(o) for o in others)) - z

    return Spec("loss", loss(z0, kept), slips=_slips(
        (loss(z0, every), "The entry of the query's own identity is masked: it leaves the softmax."),
        (loss(s * cos_positive, kept), "The margin applies to the positive column: s cos(theta + m)."),
        (loss(z0 / s, [c / s for c in kept]), "Every logit is multiplied by the scale s."),
        (loss(z0, []), "The container's other entries are the negatives."),
        (loss(z0, kept) / math.log(10), "Cross-entropy uses the natural logarithm."),
    ), hint=f"Logits: z0 = s cos(arccos({cos_positive}) + m), then s x cosine for each unmasked entry; loss = "
            "log(sum of exp(logits)) - z0.")


def check_attfc_loss(answer, cos_positive: float = 0.8, negatives=((0.3, False), (0.9, True)), s: float = 32.0,
                     m: float = 0.5) -> None:
    """Exercise 08.1: the AttFC loss of one query by hand: ArcFace on the GCC column, container
    entries as negatives, the entry of the query's own identity (True) masked."""
    _grade(answer, _spec_attfc_loss(cos_positive, negatives, s, m))


def _spec_logit_bytes(num_classes: int = 2_059_906, ratio: float = 0.3, batch_size: int = 128) -> Spec:
    from .attfc import container_capacity

    q, b = container_capacity(num_classes, ratio), batch_size
    return Spec("buffer bytes", b * q * 4, exact=True, in_bytes=True, slips=_slips(
        (b * num_classes * 4, "The columns are the container's Q entries, not all N identities (that is full FC's "
                              "logits)."),
        (b * q * 8, "fp32: 4 bytes per number."),
        (q * 4, "There is one row per query of the batch."),
        (b * q, "Count bytes: 4 per fp32 number."),
        (b * (q + 1) * 4, "The buffer has the Q container columns only, Q = floor(ratio x N): the positive logit "
                          "is not in it, and Q is rounded down."),
    ), hint="B rows, Q = floor(ratio x N) columns, 4 bytes each.")


def check_logit_bytes(answer, num_classes: int = 2_059_906, ratio: float = 0.3, batch_size: int = 128) -> None:
    """Exercise 08.2: bytes of the fused loss's one B x Q fp32 buffer."""
    _grade(answer, _spec_logit_bytes(num_classes, ratio, batch_size))


# -- lesson 09 ---------------------------------------------------------------------------
def _spec_encoder_k_bytes(parameters: int = 43_600_000) -> Spec:
    p = parameters
    return Spec("encoder_k bytes", 4 * p, exact=True, in_bytes=True, slips=_slips(
        (8 * p, "encoder_k has no optimizer: no momentum buffer, only its weights."),
        (12 * p, "encoder_k gets no gradient and no momentum: it is updated by EMA under no_grad."),
        (2 * p, "The weights are fp32: 4 bytes each."),
        (p, "Count bytes: 4 per fp32 weight."),
    ), hint="A copy of the backbone's weights, 4 bytes each; nothing else is kept between steps "
            "(BatchNorm buffers are negligible here).")


def check_encoder_k_bytes(answer, parameters: int = 43_600_000) -> None:
    """Exercise 09.1: what AttFC's key encoder adds to memory for a backbone of `parameters` fp32
    weights: one copy, with no gradient and no optimizer state."""
    _grade(answer, _spec_encoder_k_bytes(parameters))


def _spec_images_per_step(batch_size: int = 128, num_keys: int = 4) -> Spec:
    b, k = batch_size, num_keys
    return Spec("images", b * (1 + k), exact=True, slips=_slips(
        (b * k, "The B queries go through encoder_q too."),
        (b, "Each query also has K key images, embedded by encoder_k."),
        (b * (2 + k), "The backward pass does not embed images again."),
        (b + k, "Each query has its own K key images: K per query, not K per batch."),
        (b * 3, "That is with lesson 09's own K = 2: the exercise asks for K = 4."),
    ), hint="B queries through encoder_q, and K key images for each of them through encoder_k.")


def check_images_per_step(answer, batch_size: int = 128, num_keys: int = 4) -> None:
    """Exercise 09.2: images through a backbone (encoder_q or encoder_k) in one AttFC step."""
    _grade(answer, _spec_images_per_step(batch_size, num_keys))


def _spec_self_key_share(images_per_identity: int = 3, num_keys: int = 2) -> Spec:
    n, k = images_per_identity, num_keys
    none = (1 - 1 / n) ** k
    return Spec("share", 1 - none, slips=_slips(
        (1 / n, "That is one key's chance: the query has K keys, and any of them may be it."),
        (k / n, "Adding the K chances counts twice the queries where two keys are the query: take the "
                "complement, 1 - P(no key is the query)."),
        (none, "That is the share of queries with NO key equal to the query: the question asks for the rest."),
        ((1 / n) ** k, "That is the share where EVERY key is the query; at least one is asked."),
        (1 - (1 - 1 / (n - 1)) ** k if n > 1 else 2.0,
         "That is the share for one image fewer (the lesson's stored run had 2): here the identity has "
         f"{n} images, the query one of them, and each key is drawn among all {n}."),
    ), hint="Each key is the query with probability 1/n, independently; P(no key is) = (1 - 1/n)^K.")


def check_self_key_share(answer, images_per_identity: int = 3, num_keys: int = 2) -> None:
    """Exercise 09.3: the share of queries with at least one key that is the query image itself,
    when K keys are drawn with replacement among the identity's n images: 1 - (1 - 1/n)^K."""
    _grade(answer, _spec_self_key_share(images_per_identity, num_keys))


# -- worked solutions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    """One exercise: its title, the reasoning of its solution, and either the code that computes
    the answer (run and then checked by `check`, with `spec` giving the expected value and slips)
    or, for an open exercise, the expected outcome."""

    title: str
    reasoning: str
    code: str | None = None
    check: Callable | None = None
    spec: Callable[[], Spec] | None = None


_OPEN_END = "Open exercise: no check. Compare your own run with the outcome above."

EXERCISES: dict[str, Exercise] = {
    "00.1": Exercise(
        "the ground-truth quality of image 3 of identity 42 (seed 0)",
        "The quality is 1 - severity, and the severity is drawn from (seed, identity, image) alone, so\n"
        "`world.quality` gives it without rendering a pixel. It takes tensors of identities and image\n"
        "indices (counted from 0) and returns one quality per pair.",
        "world = FaceWorld(seed=0)\n"
        "answer = float(world.quality(torch.tensor([42]), torch.tensor([3]))[0])",
        check_quality, _spec_quality),
    "00.2": Exercise(
        "how many of the first 100 images of identity 7 have a quality above 0.8",
        "Ask for the 100 qualities at once (identity 7 repeated 100 times, image indices 0 to 99),\n"
        "compare with 0.8 and count the True values.",
        "world = FaceWorld(seed=0)\n"
        "quality = world.quality(torch.full((100,), 7), torch.arange(100))\n"
        "answer = int((quality > 0.8).sum())",
        check_good_images, _spec_good_images),
    "00.3": Exercise(
        "(open) identity 3 rendered with FaceWorld(seed=0, max_severity=0.0)",
        "max_severity scales the severity of every image, so at 0 every degradation is gone (no blur, noise,\n"
        "downscaling or occlusion) and every quality is exactly 1: `world.quality` returns 1.0 for all images.\n"
        "What stays: the identity's face (its latent parameters) and each image's nuisance (pose, shift,\n"
        "rotation, scale, expression, lighting, colour, background), which are drawn from the same hash as\n"
        "before. The lesson measures nothing here, so there is no spread to compare with.\n"
        "Hard to match: the nuisances that change the face's appearance the most, such as a large head\n"
        "rotation or pose, strong lighting or colour changes and expression; with degradations on, strong\n"
        "occlusion, blur and downscaling remove the details that tell two people apart."),
    "01.1": Exercise(
        "the ArcFace logit of an embedding at cosine 0.8 to its centre (s = 64, m = 0.5)",
        "ArcFace adds the margin to the angle: θ = arccos(0.8) (in radians, as math.acos returns it),\n"
        "then the target logit is s · cos(θ + m).",
        "answer = 64 * math.cos(math.acos(0.8) + 0.5)",
        check_arcface_logit, _spec_arcface_logit),
    "01.2": Exercise(
        "parameters of the FC head's W for MS1MV3 (93,431 identities, embedding_dim 512)",
        "W holds one class centre of embedding_dim numbers per identity, and the head has no bias.",
        "answer = 93_431 * 512",
        check_fc_parameters, _spec_fc_parameters),
    "01.3": Exercise(
        "accuracy of 'same person if score > 0.5' on seven pairs",
        "Decide 'same' where the score is above 0.5: 0.9, 0.6, 0.7 and 0.8. Compared with is_same, the\n"
        "rule is right on pairs 0, 1, 2, 5 and 6, counting from 0 (0.4 is a genuine pair it rejects, 0.7\n"
        "an impostor it accepts): 5 of 7. (The TAR, 3 of the 4 genuine pairs, is another figure.)",
        "scores = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1, 0.8]\n"
        "is_same = [True, False, True, True, False, False, True]\n"
        "answer = sum((sc > 0.5) == same for sc, same in zip(scores, is_same)) / len(scores)",
        check_pair_accuracy, _spec_pair_accuracy),
    "01.4": Exercise(
        "(open) retrain without a margin, then with CosFace m = 0.35",
        "Without a margin (margin_m=0.0) the target class only has to win, not win by an angle, so the\n"
        "training loss ends lower. Expected outcome, measured (CPU defaults, seeds 0 and 1): ArcFace 0.894\n"
        "and 0.887, no margin 0.891 and 0.882, CosFace m = 0.35 0.882 and 0.879. The gaps are about the\n"
        "size of the seed-to-seed spread (0.007): on this small synthetic task the margin is not what\n"
        "limits accuracy. Judge any difference against that spread, not one run."),
    "02.1": Exercise(
        "bytes of W, its gradient and the SGD momentum for WebFace42M (D = 512, float32)",
        "Three N x D float32 tensors (W, W.grad and the momentum buffer), 4 bytes a number.\n"
        "(About 11.8 GiB: already half a 24 GiB card before the step's temporaries.)",
        "answer = 3 * 2_059_906 * 512 * 4",
        check_training_state_bytes, _spec_training_state_bytes),
    "02.2": Exercise(
        "the largest N whose FC step fits in 24 GiB (D = 512, B = 128, float32, SGD with momentum)",
        "Held between steps: W and the momentum (2 N D e) and the batch (B D e + 8 B).\n"
        "Largest phase (B < D): the F.normalize(W) backward, the gradient reaching normalize(W) and four\n"
        "N x D temporaries (5 N D e), plus the embeddings' gradient (B D e). So peak(N) = 7 N D e + 2 B D e + 8 B <= 24 x 2**30 bytes,\n"
        "and the largest whole N is the floor of the solution.",
        "D, B, e = 512, 128, 4\n"
        "answer = (24 * 2**30 - 2 * B * D * e - 8 * B) // (7 * D * e)",
        check_fit_boundary, _spec_fit_boundary),
    "02.3": Exercise(
        "the smallest batch from which a logits phase sets the peak (D = 512, N = 100,000)",
        "forward = (N D e + 2 N e) + B D e + 4 B N e, and backward: centres = 5 N D e + B D e.\n"
        "forward >= centres  <=>  4 B N e >= 4 N D e - 2 N e  <=>  B >= D - 1/2: the smallest whole B is D.",
        "D = 512\n"
        "answer = D",
        check_logits_batch, _spec_logits_batch),
    "03.1": Exercise(
        "logit columns of one Partial FC step (N = 1,000,000, r = 0.1, B = 128)",
        "S = max(ceil(r N), positives): a batch of 128 has at most 128 distinct identities, far fewer than\n"
        "ceil(0.1 x 1,000,000), so the sample size is set by the rate.",
        "answer = max(math.ceil(0.1 * 1_000_000), 128)",
        check_partial_fc_columns, _spec_partial_fc_columns),
    "03.2": Exercise(
        "how far an unsampled centre moves in two steps, in units of lr * b",
        "Its gradient is 0, so each step first decays the buffer (buf = 0.9 buf) and then moves the centre\n"
        "by lr buf: 0.9 lr b, then 0.81 lr b.",
        "answer = 0.9 + 0.9 ** 2",
        check_unsampled_drift, _spec_unsampled_drift),
    "03.3": Exercise(
        "(open) Partial FC against full FC at 4,000 identities, and the memory ratio (3 + r) / 7",
        "Expected outcome, as the lesson states it (two seeds of each head): full FC 0.722 ± 0.007, Partial FC\n"
        "(r = 0.1, S = 400 columns: ~126 own identities and ~274 others) 0.683 ± 0.013, a gap of 3.9 points\n"
        "(3.2 and 4.6 on seeds 0 and 1) against 4.5 at 1,000 x 16: not smaller beyond the seeds' spread.\n"
        "Both heads fall far, because N and the images per identity changed together: 4 images of an\n"
        "identity teach its centre much less than 16. To isolate the number of negatives, keep the data and\n"
        "vary S alone (lesson 03's sweep does: r = 0.3 with 300 columns wins back a third of the loss).\n"
        "The memory ratio: full FC's peak is about 7 N D e, W and the momentum held (2) plus the\n"
        "F.normalize(W) backward, five N x D tensors at once (5). Partial FC's peak, for large N, is the\n"
        "scatter of the gradient: W and the momentum (2), the dense N x D W.grad (1) and the gradient of the\n"
        "r N gathered rows (r), so (3 + r) N D e: the ratio tends to (3 + r) / 7."),
    "04.1": Exercise(
        "a parameter of encoder_k after two EMA steps (1.0 towards 3.0, m = 0.9)",
        "θ_k ← m θ_k + (1 - m) θ_q, twice: 0.9 x 1 + 0.1 x 3 = 1.2, then 0.9 x 1.2 + 0.1 x 3 = 1.38.",
        "theta_k = 1.0\n"
        "for _ in range(2):\n"
        "    theta_k = 0.9 * theta_k + 0.1 * 3.0\n"
        "answer = theta_k",
        check_ema_value, _spec_ema_value),
    "04.2": Exercise(
        "the half-life of a step's weight in the EMA (m = 0.99)",
        "The version from n steps ago weighs (1 - m) m^n, m^n times the newest one's. m^n <= 1/2 <=>\n"
        "n >= ln(1/2) / ln(m) = 68.97 (ln(m) < 0 flips the inequality), so the smallest whole n is 69.",
        "answer = math.ceil(math.log(0.5) / math.log(0.99))",
        check_ema_half_life, _spec_ema_half_life),
    "04.3": Exercise(
        "(open) final training loss with ema_momentum = 0.9 against the default 0.999",
        "Expected outcome, as the lesson states it (the stored sweep's three seeds,\n"
        "sweep['runs'][i]['final_loss']): 9.48 ± 0.04 with m = 0.9 and 12.14 ± 0.26 with m = 0.999;\n"
        "your live runs should land within about twice those spreads.\n"
        "A too-easy positive would give the lower loss, so m = 0.9's lower loss agrees with the hypothesis,\n"
        "but does not prove it: with m = 0.999 the key encoder still holds about half of its random start,\n"
        "so every GCC, the positive and the container's negatives alike, is further from what encoder_q\n"
        "computes, which raises the loss whatever the positive's difficulty. A sharper test looks at the\n"
        "positive alone, e.g. the query's cosine to its own GCC in both runs."),
    "05.1": Exercise(
        "the attention weight of the first of two keys (cosines 0.8 and 0.4, T = 1)",
        "The weights are the softmax of the cosines over T: e^0.8 / (e^0.8 + e^0.4) = 1 / (1 + e^-0.4).",
        "answer = math.exp(0.8) / (math.exp(0.8) + math.exp(0.4))",
        check_attention_weight, _spec_attention_weight),
    "05.2": Exercise(
        "the largest ratio of two keys' weights at T = 0.5",
        "w_i / w_j = exp((c_i - c_j) / T), and two cosines differ by at most 2 (from -1 to 1):\n"
        "the largest ratio is e^(2 / T) = e^4.",
        "answer = math.exp(2 / 0.5)",
        check_weight_ratio, _spec_weight_ratio),
    "05.3": Exercise(
        "(open) quality_study again at temperature 0.1",
        "Expected outcome, as the lesson states it (two trained models): the weights spread out (largest /\n"
        "smallest per query about 220 instead of 1.4), the share of identities whose most-weighted key is the\n"
        "best one is exactly the same, and the Spearman correlation over all keys moves a little (0.199 ->\n"
        "0.205 and 0.202 -> 0.206), those by degradation type by up to 0.04.\n"
        "Why: dividing the cosines by T and taking a softmax keeps the order of one query's keys, so the\n"
        "most-weighted key of each query cannot change. The Spearman correlation is computed over all keys\n"
        "of all queries together; each query's softmax stretches its own weights differently, so the\n"
        "ranking of weights across queries changes, and with it the rank correlation."),
    "06.1": Exercise(
        "the cosine to the TCC of the mean of K = 4 keys, if one key has 0.6",
        "For a unit centre c and an error e perpendicular to it, cos = 1 / sqrt(1 + |e|^2): one key at 0.6\n"
        "gives |e|^2 = 1 / 0.36 - 1. The mean of 4 keys is c + (mean of the errors), of squared length\n"
        "|e|^2 / 4 on average for independent errors. About 0.83, against about 0.70 measured (one key:\n"
        "0.61): an identity's images share part of their error (its embeddings cluster around a point that\n"
        "is not the TCC), and averaging cannot remove what they share.",
        "x = 1 / 0.6 ** 2 - 1\n"
        "answer = 1 / math.sqrt(1 + x / 4)",
        check_mean_cosine, _spec_mean_cosine),
    "06.2": Exercise(
        "the largest weight one of K = 8 keys can get (T = 1)",
        "One key at cosine 1, the seven others at -1: e^1 / (e^1 + 7 e^-1) = e^2 / (e^2 + 7), about 0.51.\n"
        "Even in the most extreme case the GCC keeps half of its weight on the other keys.",
        "answer = math.exp(2) / (math.exp(2) + 7)",
        check_max_weight, _spec_max_weight),
    "06.3": Exercise(
        "(open) gcc_vs_tcc again with temperature 0.1",
        "Expected outcome, as the lesson states it: the GCC now falls below the plain mean for K = 4 and 8,\n"
        "by about 0.005 and 0.007 in cosine in the stored run (95 % intervals of about ±0.0015; another run\n"
        "gave 0.004 and 0.006, an FC model trained with seed 1 0.002 and 0.005), while at K = 2 the\n"
        "difference is within noise (about -0.001 ± 0.002).\n"
        "Why: attention weighs the keys by their cosine to the query, and the query is a single image, a\n"
        "poor centre itself (cosine about 0.61 to the TCC). A sharper attention puts most of the weight on\n"
        "the keys most like the query: the GCC averages fewer keys, so less of their error cancels, and it\n"
        "leans towards the query's own error instead of the identity's centre."),
    "07.1": Exercise(
        "bytes of a container of ratio 0.1 for WebFace42M (D = 512, fp32 centres)",
        "Q = floor(0.1 x 2,059,906) = 205,990 entries, each 512 fp32 numbers (4 bytes) and one int64 label\n"
        "(8 bytes). About 404 MiB.",
        "Q = math.floor(0.1 * 2_059_906)\n"
        "answer = Q * (512 * 4 + 8)",
        check_container_bytes, _spec_container_bytes),
    "07.2": Exercise(
        "the share of N = 1,000 identities with an entry among Q = 600 uniformly drawn labels",
        "One identity misses one entry with probability 1 - 1/N, and all Q independent entries with\n"
        "(1 - 1/N)^Q; the share present is one minus that (about 1 - e^(-Q/N), which is right too).",
        "answer = 1 - (1 - 1 / 1000) ** 600",
        check_identities_present, _spec_identities_present),
    "07.3": Exercise(
        "(open) the turnover watch with dcc_ratio = 1.0 (Q = 1,000)",
        "Expected outcome, as the lesson states it (seeds 0, 1 and 2, set with TrainConfig(seed=...)):\n"
        "62.0 % ± 0.1 % of the queries meet their own identity, with 0.94 ± 0.01 own entries each; 64.4 % ±\n"
        "0.1 % of the identities are present (exercise 2's formula: 63.2 %); the entries are 4.4 steps old on\n"
        "average and the oldest 8 steps old when used.\n"
        "Why slightly fewer queries than identities: within an epoch each image is drawn once, so an\n"
        "identity that was just in a batch, and so has entries in the container, has fewer images left to\n"
        "draw. The next batches' queries come a little more often from identities not seen lately, which\n"
        "are less likely to be present."),
    "08.1": Exercise(
        "the AttFC loss of one query (cosine 0.8 to its GCC, entries at 0.3 and at 0.9 of its own identity)",
        "The entry of the query's own identity (0.9) is masked out of the softmax. The logits are the GCC\n"
        "column with the ArcFace margin, z0 = s cos(arccos 0.8 + 0.5), and s x 0.3 for the other entry;\n"
        "the loss is the cross-entropy log(e^z0 + e^(32 x 0.3)) - z0.",
        "z0 = 32 * math.cos(math.acos(0.8) + 0.5)\n"
        "answer = math.log(math.exp(z0) + math.exp(32 * 0.3)) - z0",
        check_attfc_loss, _spec_attfc_loss),
    "08.2": Exercise(
        "bytes of the fused loss's B x Q fp32 buffer (WebFace42M, ratio 0.3, B = 128)",
        "Q = floor(0.3 x 2,059,906) = 617,971 columns, 128 rows, 4 bytes each (about 302 MiB).",
        "Q = math.floor(0.3 * 2_059_906)\n"
        "answer = 128 * Q * 4",
        check_logit_bytes, _spec_logit_bytes),
    "08.3": Exercise(
        "(open) AttFC with K = 2",
        "Expected outcome, as the lesson states it (lesson 05's stored K sweep, data/sweeps/k.json): 10-fold\n"
        "accuracy 0.858 ± 0.016 (seeds 0.842 and 0.875), between the DCQ-style head and K = 4; TAR at 1e-3\n"
        "0.129 ± 0.009, below K = 4's 0.166; a head step at N = 100,000 0.13 MiB below K = 4's (two fewer keys\n"
        "of 128 floats for each of 128 queries: 2 x 128 x 128 x 4 bytes); on an idle machine, images per\n"
        "second between the DCQ-style head's and K = 4's.\n"
        "What limits K is not the head but the key images: each step embeds B (1 + K) images (exercise 09.2),\n"
        "B K of them through encoder_k, with their activations and the data pipeline's rendering or loading.\n"
        "On a GPU, with large batches and a large backbone, that is compute time and activation memory, so\n"
        "K = 2 buys most of the benefit of several keys at the lowest cost."),
    "09.1": Exercise(
        "bytes AttFC's key encoder adds for a backbone of 43.6 million fp32 weights",
        "One copy of the weights, 4 bytes each; no gradient and no optimizer state, since it moves by EMA\n"
        "under no_grad. About 166 MiB.",
        "answer = 4 * 43_600_000",
        check_encoder_k_bytes, _spec_encoder_k_bytes),
    "09.2": Exercise(
        "images through a backbone in one AttFC step (B = 128, K = 4)",
        "The 128 queries go through encoder_q and their 4 x 128 key images through encoder_k; the backward\n"
        "pass embeds nothing again.",
        "answer = 128 * (1 + 4)",
        check_images_per_step, _spec_images_per_step),
    "09.3": Exercise(
        "the share of queries with a key that is the query image (3 images per identity, K = 2)",
        "Each of the K keys is drawn among the identity's n images, the query included, so it is the query\n"
        "with probability 1/n, independently of the other keys. No key is the query with probability\n"
        "(1 - 1/n)^K; at least one is, with the rest: 1 - (2/3)^2 = 5/9, about 56 % of the queries.",
        "answer = 1 - (1 - 1 / 3) ** 2",
        check_self_key_share, _spec_self_key_share),
    "09.4": Exercise(
        "(open) AttFC at 10 times full FC's limit under the same budget",
        "Expected outcome, as the stored run gave it: full FC's limit is about 21,000 identities (16-pixel faces,\n"
        "100 MiB), AttFC trains at 5x, and at 10x (N = 209,540 there) it runs out of memory in its first\n"
        "step. The allocation that failed asked for 8,046,336 bytes. With Q = floor(0.3 x 209,540) = 62,862\n"
        "container entries, that is B x Q = 128 x 62,862 bytes: one byte per logit, a bool tensor, the mask\n"
        "that finds the container's entries of each query's own identity (lesson 07). It is not the largest\n"
        "tensor of the step: the fused loss's B x Q fp32 logits (lesson 08) are four times larger\n"
        "(32,185,344 bytes) and were allocated just before it. An out-of-memory error names the allocation\n"
        "that crossed the cap, the last straw, not the largest one. Why at this N, with no W: the container\n"
        "(Q x D floats and an int64 label each, 31 MiB here) and every B x Q buffer grow in proportion to N,\n"
        "so AttFC's memory still grows with N, through Q, if far more slowly than full FC's; a smaller\n"
        "container ratio (--dcc-ratio) moves its limit, at the accuracy cost lesson 07 measured. Your own run\n"
        "may name another buffer of the same step if its N differs a little from the stored one's."),
}


def _normalise_id(exercise) -> str:
    text = str(exercise).strip()
    lesson, dot, number = text.partition(".")
    if dot and lesson.isdigit() and number.isdigit():
        text = f"{int(lesson):02d}.{int(number)}"
    if text not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}: the exercises are {', '.join(EXERCISES)} "
                         "(lesson.number, e.g. solution(\"05.2\"))")
    return text


def _show(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"


def solution(exercise: str) -> None:
    """Print the worked solution of an exercise ("05.2": lesson 05, exercise 2): the reasoning and
    the computation, then run the exercise's check on the result. Open exercises print their
    expected outcome instead."""
    key = _normalise_id(exercise)
    ex = EXERCISES[key]
    print(f"Exercise {key}: {ex.title}\n")
    print(ex.reasoning)
    if ex.code is None:
        print("\n" + _OPEN_END)
        return
    from .faces import FaceWorld

    namespace = {"math": math, "torch": torch, "FaceWorld": FaceWorld}
    exec(ex.code, namespace)  # the code shown is the code run
    answer = namespace["answer"]
    print("\n" + "\n".join("    " + line for line in ex.code.splitlines()))
    print(f"answer = {_show(answer)}\n")
    ex.check(answer)
