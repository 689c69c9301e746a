"""Memory and traffic of one head step on each rank, measured (lesson 10).

`measure_rank_memory(head, N, D, B, world_size)` measures one steady-state step of the head each
rank of a run over `world_size` processes holds (`ShardedFC`, `ShardedPartialFC`, or AttFC with
the gathered container; with one process, the single-process head), with lesson 02's
`measure_head_step` (the CPU profiler's allocation records, or the CUDA allocator), and counts
the bytes each collective sent. Several processes are started with torchrun in a subprocess:

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m attfc_lite.distributed.measure '<json>'
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from ..checks import ArgumentError, as_int

__all__ = ["measure_rank_memory"]


def _measure_here(spec: dict, world) -> dict:
    from ..heads import make_head
    from ..memory import measure_head_step
    from .parallel import parallel_head

    torch.manual_seed(0)
    kwargs = dict(spec.get("knobs", {}))
    if world.size > 1:
        head = parallel_head(spec["head"], spec["embedding_dim"], spec["num_classes"], world, **kwargs)
    else:
        head = make_head(spec["head"], spec["embedding_dim"], spec["num_classes"], **kwargs)
    world.traffic.reset()
    m = measure_head_step(head, spec["batch_size"], device="cpu", time_step=False, seed=world.rank,
                          warmup_steps=1)
    steps = 2  # the warm-up step and the measured one
    return {"rank": world.rank, "held_bytes": m.held_bytes, "step_peak_bytes": m.step_peak_bytes,
            "peak_bytes": m.peak_bytes,
            "traffic_per_step": {k: v // steps for k, v in world.traffic.bytes.items()}}


def measure_rank_memory(head: str, num_classes: int, embedding_dim: int, batch_size: int, world_size: int = 2,
                        timeout_s: float = 300.0, **knobs) -> dict:
    """Per-rank memory of one head step over `world_size` processes on this CPU, and its traffic.

    Returns {"world_size", "head", ..., "ranks": [{"rank", "held_bytes", "step_peak_bytes",
    "peak_bytes", "traffic_per_step": {collective: bytes}}, ...]}.
    """
    world_size = as_int("world_size", world_size, 1, 64)
    if head not in ("fc", "partial_fc", "attfc"):
        raise ArgumentError("head", f"must be 'fc', 'partial_fc' or 'attfc', got {head!r}")
    spec = {"head": head, "num_classes": as_int("num_classes", num_classes, 2),
            "embedding_dim": as_int("embedding_dim", embedding_dim, 1),
            "batch_size": as_int("batch_size", batch_size, 2), "knobs": knobs}
    if world_size == 1:
        from .world import World

        ranks = [_measure_here(spec, World())]
    else:
        from .launch import torchrun

        with tempfile.TemporaryDirectory() as tmp:
            spec["out"] = tmp
            torchrun(["-m", "attfc_lite.distributed.measure", json.dumps(spec)], world_size, timeout_s)
            ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world_size)]
    return {"world_size": world_size, **{k: v for k, v in spec.items() if k != "out"}, "ranks": ranks}


def _main(spec: dict) -> None:
    from .world import World

    torch.set_num_threads(1)
    world = World.from_env()
    result = _measure_here(spec, world)
    Path(spec["out"], f"rank{world.rank}.json").write_text(json.dumps(result))
    world.barrier()
    world.close()


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
