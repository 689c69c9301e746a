"""The processes of a run (lesson 10): who am I (`rank`), how many are we (`size`), and the
collectives the heads use, each one counted in bytes sent.

`torchrun` (`python -m torch.distributed.run --nproc_per_node P ...`) starts P copies of a
command and gives each the environment variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `World.from_env()` reads them and joins the process group: `gloo` on the CPU,
`nccl` on CUDA. Without them a run is one process, `World()`: rank 0 of 1, and every collective
below is the identity, so the single-process code path is the same code.

Bytes sent are counted the way a ring algorithm sends them, per rank: an all-reduce of n bytes
sends 2 (P - 1) / P * n, an all-gather of n bytes from each rank sends (P - 1) * n. They are
what the tensor sizes imply, not what the transport measured.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..checks import ArgumentError

__all__ = ["World", "Traffic", "shard_range"]


def shard_range(num_rows: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's rows when `num_rows` are split over `size` ranks as evenly as
    possible: the first num_rows % size ranks get one row more (as insightface's Partial FC)."""
    base, extra = divmod(int(num_rows), int(size))
    start = base * rank + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass
class Traffic:
    """Bytes each collective sent from this rank, by name, and how many calls."""

    bytes: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)

    def add(self, name: str, sent: float) -> None:
        self.bytes[name] = self.bytes.get(name, 0) + int(round(sent))
        self.calls[name] = self.calls.get(name, 0) + 1

    def total(self) -> int:
        return sum(self.bytes.values())

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


@dataclass
class World:
    """Rank `rank` of `size` processes; `World()` is a single process."""

    rank: int = 0
    size: int = 1
    traffic: Traffic = field(default_factory=Traffic)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where nccl needs its tensors

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files, prints and evaluates."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device | None = None, timeout_s: float = 3600.0) -> "World":
        """Join the process group torchrun describes in the environment (one process without it).

        `timeout_s` bounds a collective's wait: the other ranks wait for rank 0's evaluation."""
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
        if not dist.is_initialized():
            cuda = device is not None and device.type == "cuda"
            if cuda:  # one GPU per process: the local rank's
                local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
                if local >= gpus:
                    raise ArgumentError("device", f"is CUDA, with one GPU per process, but torchrun started "
                                                  f"{os.environ.get('LOCAL_WORLD_SIZE', local + 1)} processes on "
                                                  f"this machine and it has {gpus} GPU(s): use --nproc_per_node "
                                                  f"{gpus}, or --device cpu (gloo) for processes on the CPU")
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device=on)

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # --- collectives: the identity in a single process ---------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", name: str = "all_reduce") -> torch.Tensor:
        """`tensor` reduced over the ranks, in place ('sum' or 'max'), and returned."""
        if self.size > 1:
            self.traffic.add(name, 2 * (self.size - 1) / self.size * tensor.numel() * tensor.element_size())
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def all_gather(self, tensor: torch.Tensor, name: str = "all_gather") -> torch.Tensor:
        """Every rank's `tensor` (the same shape on each), concatenated along dim 0 in rank order."""
        if self.size == 1:
            return tensor
        self.traffic.add(name, (self.size - 1) * tensor.numel() * tensor.element_size())
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_rows(self, tensor: torch.Tensor, num_rows: int, name: str = "gather_rows") -> torch.Tensor:
        """The whole [num_rows, ...] tensor from each rank's `shard_range` rows (uneven shards padded)."""
        if self.size == 1:
            return tensor
        longest = shard_range(num_rows, 0, self.size)
        pad = torch.zeros((longest[1] - longest[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        pad[:tensor.shape[0]] = tensor
        parts = self.all_gather(pad, name).split(pad.shape[0])
        return torch.cat([p[:stop - start] for p, (start, stop) in
                          zip(parts, (shard_range(num_rows, r, self.size) for r in range(self.size)))])

    def rows(self, tensor: torch.Tensor, num_rows: int) -> torch.Tensor:
        """This rank's rows of a whole [num_rows, ...] tensor (the inverse of `gather_rows`)."""
        start, stop = shard_range(num_rows, self.rank, self.size)
        return tensor[start:stop]

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (a loss that each rank computed on its own batch)."""
        if self.size == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.all_reduce(t, name="loss")[0]) / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
