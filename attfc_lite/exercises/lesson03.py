"""Lesson 03's exercise checks: Partial FC's logit columns, and how far an unsampled centre drifts under momentum."""
from __future__ import annotations

import torch

from .common import Spec, _grade, _slips


def _spec_partial_fc_columns(num_classes: int = 1_000_000, sample_rate: float = 0.1, batch_size: int = 128) -> Spec:
    from ..heads.partial_fc import PartialFC

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
