"""AttFC over several processes (lesson 10): one container, the same on every rank.

MoCo's answer for a queue: each rank computes the GCCs of its own batch, then every rank
enqueues the GCCs and labels of all ranks, gathered in rank order (`all_gather`), so the P
containers stay equal entry for entry without ever being sent. The container does not shrink
with more ranks (each holds all Q entries); what grows is the enqueue, P * B entries a step.
The loss needs nothing else: each rank's queries meet the same container, the own-identity mask
compares a query's label with the labels of entries gathered from every rank, and
DistributedDataParallel averages the backbone's gradient over the ranks' batches.
"""
from __future__ import annotations

import torch

from ..heads.attfc import AttFC
from .world import World

__all__ = ["gather_container"]


def gather_container(head: AttFC, world: World) -> AttFC:
    """Make `head` enqueue the GCCs and labels of every rank; returns the head."""
    if world.size == 1:
        head.gather = None
        return head

    def gather(gcc: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return world.all_gather(gcc.contiguous(), "gcc"), world.all_gather(labels.long(), "gcc_labels")

    head.gather = gather
    return head
