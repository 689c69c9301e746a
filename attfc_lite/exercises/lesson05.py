"""Lesson 05's exercise checks: attention over the keys: one key's weight, and the largest ratio of two weights."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


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
