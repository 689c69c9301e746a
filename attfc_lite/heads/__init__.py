"""The heads and their registry: `make_head` builds any of them by its CLI name (lessons 01, 03, 08).

Rooms, bottom-up: `base` (the `Head` interface and `FullFC`, lessons 01-02), `partial_fc`
(lesson 03) and `attfc` (lessons 07-08), each built on `base` only. This registry sits above
them all, so a reader can open the heads in that order without meeting one that is not yet
written.
"""
from __future__ import annotations

from .base import FullFC, Head
from .partial_fc import DEFAULT_SAMPLE_RATE, PartialFC, plot_sample
from .attfc import (DEFAULT_CONTAINER_RATIO, DEFAULT_NUM_KEYS, AttFC, attfc_loss,
                    container_capacity)

__all__ = ["Head", "FullFC", "PartialFC", "AttFC", "HEADS", "make_head", "attfc_loss",
           "container_capacity", "plot_sample", "DEFAULT_SAMPLE_RATE", "DEFAULT_CONTAINER_RATIO",
           "DEFAULT_NUM_KEYS"]

HEADS = {"fc": FullFC, "partial_fc": PartialFC, "attfc": AttFC}


def make_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> Head:
    """Build a head by its CLI name: 'fc', 'partial_fc' or 'attfc'."""
    key = str(name).lower()
    if key not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {name!r}")
    return HEADS[key](embedding_dim, num_classes, **kwargs)
