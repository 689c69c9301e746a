"""Lesson 08's exercise checks: AttFC assembled: one query's loss by hand, and the fused loss's B x Q buffer."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


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
    from ..heads.attfc import container_capacity

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
