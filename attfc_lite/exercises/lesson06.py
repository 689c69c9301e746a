"""Lesson 06's exercise checks: the cosine of a mean of keys, and the largest weight one key can get."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


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
