"""Lesson 01's exercise checks: the ArcFace logit, the FC head's parameters, and the accuracy of a verification rule."""
from __future__ import annotations

import math

import torch

from .common import Spec, _grade, _slips


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
