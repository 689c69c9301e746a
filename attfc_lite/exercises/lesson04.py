"""Lesson 04's exercise checks: the key encoder's EMA: a parameter after two steps, and a step's half-life."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


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
