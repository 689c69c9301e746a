"""What `train` does differently when torchrun starts it on P processes (lesson 10).

- the heads: FC and Partial FC as shards of W (`ShardedFC`, `ShardedPartialFC`), AttFC with the
  container filled from every rank (`gather_container`);
- the backbone under DistributedDataParallel, which averages its gradient over the ranks;
- the batches: every rank draws the same epoch order from the run's seed (the rules of a
  single-process run), takes P * batch_size images a step and keeps its own batch_size of them,
  as a DistributedSampler would, so a run over P ranks is reproducible;
- the checkpoint: rank 0 writes one file with the whole W (its shards gathered) and the whole
  momentum, which a run over the same P cuts into shards again; `world_size` records P.
"""
from __future__ import annotations

import torch
from torch import nn

from ..heads import Head, make_head
from .gathered import gather_container
from .sharded_fc import ShardedFC, ShardedPartialFC
from .world import World

__all__ = ["parallel_head", "wrap_backbone", "gathered_states", "sharded_states", "check_world_size",
           "WorldSizeMismatch"]


class WorldSizeMismatch(ValueError):
    """A checkpoint resumed by another number of processes than wrote it."""


def parallel_head(name: str, embedding_dim: int, num_classes: int, world: World, **kwargs) -> Head:
    """The head `name` for rank `world.rank` of a run over `world.size` processes."""
    if name == "fc":
        return ShardedFC(embedding_dim, num_classes, world, **kwargs)
    if name == "partial_fc":
        return ShardedPartialFC(embedding_dim, num_classes, world, **kwargs)
    head = make_head(name, embedding_dim, num_classes, **kwargs)
    return gather_container(head, world) if name == "attfc" else head


def wrap_backbone(backbone: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The backbone as the training step calls it: under DDP with several processes."""
    if world.size == 1:
        return backbone
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":  # one GPU per process: the one `World.from_env` chose (LOCAL_RANK)
        return DistributedDataParallel(backbone, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(backbone)


def _weight_slot(head: Head, optimizer: torch.optim.Optimizer) -> int | None:
    """The index of the head's sharded W in the optimizer's state_dict (None: no shard)."""
    if not isinstance(head, ShardedFC):
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(params) if p is head.weight)


def gathered_states(head: Head, optimizer: torch.optim.Optimizer, world: World) -> tuple[dict, dict]:
    """(head state, optimizer state) with W and its momentum whole: every rank must call it."""
    head_state, optim_state = head.state_dict(), optimizer.state_dict()
    slot = _weight_slot(head, optimizer)
    if slot is None or world.size == 1:
        return head_state, optim_state
    n = head.num_classes
    head_state["weight"] = world.gather_rows(head_state["weight"], n, "checkpoint")
    buffer = optim_state["state"].get(slot, {}).get("momentum_buffer")
    if buffer is not None:
        optim_state["state"][slot] = dict(optim_state["state"][slot],
                                          momentum_buffer=world.gather_rows(buffer, n, "checkpoint"))
    return head_state, optim_state


def sharded_states(head_state: dict, optim_state: dict, head: Head, optimizer: torch.optim.Optimizer,
                   world: World) -> tuple[dict, dict]:
    """The inverse of `gathered_states`: this rank's rows of a checkpoint's W and momentum."""
    slot = _weight_slot(head, optimizer)
    if slot is None or world.size == 1:
        return head_state, optim_state
    n = head.num_classes
    head_state = dict(head_state, weight=world.rows(head_state["weight"], n))
    state = dict(optim_state["state"])
    if "momentum_buffer" in state.get(slot, {}):
        state[slot] = dict(state[slot], momentum_buffer=world.rows(state[slot]["momentum_buffer"], n))
    return head_state, dict(optim_state, state=state)


def check_world_size(saved: int, world: World, path) -> None:
    """A checkpoint resumes with the number of processes that wrote it."""
    if int(saved) == world.size:
        return
    how = ("without torchrun (one process)" if saved == 1 else
           f"with `python -m torch.distributed.run --nproc_per_node {saved} -m attfc_lite train ... --resume`")
    raise WorldSizeMismatch(f"{path} was written by a run over {saved} process{'es' if saved > 1 else ''} and this "
                          f"run has {world.size}: the shards of W and the batches each process takes depend on "
                          f"that number, so resume it {how}, or start a new run")
