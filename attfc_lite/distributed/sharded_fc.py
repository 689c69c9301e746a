"""Model-parallel FC (lesson 10): each rank holds N / P rows of W, the softmax spans them all.

As insightface's `arcface_torch` does it, for P ranks each with a batch of B:
1. every rank gathers the embeddings and labels of all ranks (P * B rows, `all_gather`);
2. each computes the cosines of those P * B embeddings to its own rows of W only, and the margin
   on the rows whose label falls in its shard (target -1 elsewhere: `margins` allows it);
3. the softmax over all N columns needs two numbers per row from every rank: the row's maximum
   (`all_reduce` max) and its sum of exponentials (`all_reduce` sum); the target's logit comes
   from the one rank that holds it (`all_reduce` sum of zeros elsewhere);
4. backward: the gradient of the logits, p - onehot, is local to each rank's columns; the
   gradient of the gathered embeddings is partial on each rank and summed over the ranks
   (`all_reduce` sum), and each rank keeps its own B rows, times P because
   DistributedDataParallel divides the backbone's gradient by P.

Each rank's loss is then the loss of single-process FullFC on the P batches concatenated, and
the backbone's gradient after DDP is its gradient (`tests/test_distributed.py` checks both).
Partial FC samples within each rank's shard: the positives it holds and random others.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import as_float, as_int
from ..heads.base import Head
from ..heads.partial_fc import DEFAULT_SAMPLE_RATE, sample_centres
from ..margins import Margin, make_margin
from .world import World, shard_range

__all__ = ["ShardedFC", "ShardedPartialFC", "sharded_cross_entropy", "gather_embeddings"]


class _GatherEmbeddings(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, world: World) -> torch.Tensor:
        ctx.world = world
        return world.all_gather(local, "embeddings")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = ctx.world
        grad = world.all_reduce(grad.contiguous().clone(), "sum", "embedding_grad")
        rows = grad.shape[0] // world.size
        return grad[world.rank * rows:(world.rank + 1) * rows] * world.size, None


def gather_embeddings(local: torch.Tensor, world: World) -> torch.Tensor:
    """The embeddings of every rank, [P * B, D], with the gradient that DDP expects of its own B rows."""
    return _GatherEmbeddings.apply(local, world) if world.size > 1 else local


class _ShardedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, world: World) -> torch.Tensor:
        logits = logits.detach()
        row_max = world.all_reduce(logits.max(1).values, "max", "softmax_max")
        p = (logits - row_max[:, None]).exp_()  # the one [P * B, N / P] buffer, kept for backward
        total = world.all_reduce(p.sum(1), "sum", "softmax_sum")
        has = target >= 0
        picked = torch.zeros_like(row_max)
        picked[has] = logits[has, target[has]]
        picked = world.all_reduce(picked, "sum", "target_logit")
        p.div_(total[:, None])
        ctx.save_for_backward(p, target)
        return (total.log() + row_max - picked).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        p, target = ctx.saved_tensors
        has = target >= 0
        grad = p.clone() if ctx.needs_input_grad[0] else None
        if grad is not None:
            grad[has, target[has]] -= 1
            grad.mul_(grad_out / p.shape[0])
        return grad, None, None


def sharded_cross_entropy(logits: torch.Tensor, target: torch.Tensor, world: World) -> torch.Tensor:
    """Mean cross-entropy of rows whose columns are split over the ranks.

    `logits` [R, C_rank]: this rank's columns; `target` [R]: the target's column here, or -1 when
    another rank holds it. With one rank it is `F.cross_entropy(logits, target)`.
    """
    return _ShardedCrossEntropy.apply(logits, target, world)


class ShardedFC(Head):
    """Rank `world.rank`'s rows of the full FC layer's W, [N / P, embedding_dim]; loss over all N."""

    def __init__(self, embedding_dim: int, num_classes: int, world: World | None = None,
                 margin: Margin | str = "arcface", **margin_kwargs) -> None:
        super().__init__()
        self.embedding_dim = as_int("embedding_dim", embedding_dim, 1)
        self.num_classes = as_int("num_classes", num_classes, 2)
        self.world = world or World()
        if self.num_classes < self.world.size:
            raise ValueError(f"num_classes ({self.num_classes}) must be at least the number of processes "
                             f"({self.world.size}): each holds a shard of the class centres")
        self.start, self.stop = shard_range(self.num_classes, self.world.rank, self.world.size)
        self.margin = make_margin(margin, **margin_kwargs) if isinstance(margin, str) else margin
        self.weight = nn.Parameter(torch.empty(self.stop - self.start, self.embedding_dim))
        # Every rank runs the same seeded code: a seed drawn from the shared stream, plus the rank,
        # keeps the shards different from each other and the ranks' streams in step.
        gen = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,))) + self.world.rank)
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=gen) * 0.01)

    def _shard_target(self, labels: torch.Tensor) -> torch.Tensor:
        inside = (labels >= self.start) & (labels < self.stop)
        return torch.where(inside, labels - self.start, torch.full_like(labels, -1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        all_embeddings = gather_embeddings(embeddings, self.world)
        all_labels = self.world.all_gather(labels.long(), "labels")
        target = self._shard_target(all_labels)
        rows, target = self._rows(target)
        centres = self.weight if rows is None else self.weight[rows]
        cosine = F.linear(F.normalize(all_embeddings, dim=1), F.normalize(centres, dim=1)).clamp(-1, 1)
        return sharded_cross_entropy(self.margin(cosine, target), target, self.world)

    def _rows(self, target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return None, target  # every row of the shard

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"rows=[{self.start}, {self.stop}) of rank {self.world.rank}/{self.world.size}")


class ShardedPartialFC(ShardedFC):
    """Partial FC on a shard: the positives this rank holds and random others, sample_rate of its rows."""

    def __init__(self, embedding_dim: int, num_classes: int, world: World | None = None,
                 sample_rate: float = DEFAULT_SAMPLE_RATE, margin: Margin | str = "arcface", seed: int = 0,
                 **margin_kwargs) -> None:
        super().__init__(embedding_dim, num_classes, world, margin, **margin_kwargs)
        self.sample_rate = as_float("sample_rate", sample_rate, 0, 1, low_open=True)
        rows = self.stop - self.start
        self.num_sample = min(rows, max(1, math.ceil(self.sample_rate * rows)))
        self.seed = as_int("seed", seed, 0)
        self.step = 0

    def _rows(self, target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not self.training:
            return None, target
        inside = target >= 0
        seed = (self.seed * 1_000_003 + self.step) * 65_537 + self.world.rank
        index = sample_centres(target[inside], self.stop - self.start, self.num_sample, seed)
        self.step += 1
        sampled = torch.full_like(target, -1)
        sampled[inside] = torch.searchsorted(index, target[inside])
        return index, sampled

    def get_extra_state(self) -> dict:
        return {"step": self.step}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
