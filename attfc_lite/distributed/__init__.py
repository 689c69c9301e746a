"""Beyond one GPU (lesson 10): the heads over several processes with `torch.distributed`.

Rooms, bottom-up: `world` (the processes, their collectives counted in bytes), `sharded_fc`
(model-parallel FC and Partial FC, as insightface's arcface_torch), `gathered` (AttFC's one
container, filled from every rank, as MoCo's queue), `parallel` (what `train` does differently
under torchrun: the heads it builds, the batch each rank takes, the checkpoint rank 0 writes),
`measure` (one head step's memory and traffic on each rank, measured through torchrun) and
`per_rank` (the model of both against the number of processes, and its figure).
"""
from __future__ import annotations

from .world import Traffic, World, shard_range
from .sharded_fc import ShardedFC, ShardedPartialFC, gather_embeddings, sharded_cross_entropy
from .gathered import gather_container

__all__ = ["World", "Traffic", "shard_range", "ShardedFC", "ShardedPartialFC", "gather_embeddings",
           "sharded_cross_entropy", "gather_container"]
