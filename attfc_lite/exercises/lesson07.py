"""Lesson 07's exercise checks: the dynamic class container: its bytes, and the share of identities it holds."""
from __future__ import annotations

from .common import Spec, _grade, _slips


def _spec_container_bytes(num_classes: int = 2_059_906, ratio: float = 0.1, embedding_dim: int = 512) -> Spec:
    from ..heads.attfc import container_capacity

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
