"""Lesson 10's exercise checks: one rank's shard of W with its momentum, the bytes of the embedding
gradient's all-reduce, and AttFC's container on each rank."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


def _spec_shard_bytes(num_classes: int = 2_059_906, embedding_dim: int = 512, world_size: int = 8) -> Spec:
    n, d, p = num_classes, embedding_dim, world_size
    rows = math.ceil(n / p)  # the largest shard (`shard_range`: the first N mod P ranks hold one row more)
    return Spec("shard bytes", 2 * rows * d * 4, exact=True, in_bytes=True, slips=_slips(
        (2 * n * d * 4, "That is the whole W and its momentum: each of the P ranks holds only its own shard."),
        (rows * d * 4, "SGD with momentum keeps a momentum buffer of the same shape as the shard: count it too."),
        (3 * rows * d * 4, "Between steps a rank holds its shard and its momentum; the shard's gradient is made in "
                           "the backward pass and freed after the optimizer step."),
        (2 * (n // p) * d * 4, "That is the smallest shard: N is not a multiple of P, so the first N mod P ranks hold "
                               "one row more. Give the largest shard's bytes."),
        (2 * (n / p) * d * 4, "A shard holds whole rows: N / P is not a whole number here. The largest shard has "
                              "N / P rounded up."),
        (2 * rows * d, "The shard and its momentum are fp32: 4 bytes per number."),
        (2 * rows * d * 8, "The shard and its momentum are fp32: 4 bytes per number, not 8."),
    ), hint="The largest shard has ceil(N / P) rows of D fp32 numbers (4 bytes each); its momentum buffer "
            "has the same shape.")


def check_shard_bytes(answer, num_classes: int = 2_059_906, embedding_dim: int = 512, world_size: int = 8) -> None:
    """Exercise 10.1: bytes of the largest shard of W and its momentum buffer, held by one rank of a
    model-parallel FC over `world_size` processes (fp32, SGD with momentum)."""
    _grade(answer, _spec_shard_bytes(num_classes, embedding_dim, world_size))


def _spec_embedding_grad_bytes(batch_size: int = 64, embedding_dim: int = 512, world_size: int = 16) -> Spec:
    b, d, p = batch_size, embedding_dim, world_size
    tensor = p * b * d * 4  # the gradient of the P*B gathered embeddings, fp32
    expected = 2 * (p - 1) * b * d * 4
    pairs = [
        # before the unit slips (the first of equal values wins): at P = 8 this one is also 8 x the answer
        (2 * (p - 1) * tensor, "That is 2 (P - 1) times the whole tensor: a ring all-reduce sends 2 (P - 1) chunks "
                               "of the tensor, each 1 / P of it. Divide by P."),
        (tensor, "That is the size of the tensor reduced; a ring all-reduce sends 2 (P - 1) / P of it from each "
                 "rank (a reduce-scatter, then an all-gather)."),
        ((p - 1) * b * d * 4, "That is (P - 1) / P of the tensor: one half of a ring all-reduce, the reduce-scatter "
                              "(or what the forward's all-gather of the embeddings sent). The all-gather that "
                              "completes the all-reduce sends as much again."),
        (2 * tensor, "A rank does not send its own chunk to itself: 2 (P - 1) / P of the tensor, not twice all of it."),
        ((p - 1) * tensor, "That is sending the whole tensor to every other rank; a ring all-reduce sends only "
                           "2 (P - 1) / P of it from each rank."),
        (2 * (p - 1) / p * b * d * 4, "The gradient reduced is that of all P x B gathered embeddings (every rank's "
                                      "logits used all of them), not only the rank's own B rows."),
        (2 * (p - 1) * b * d, "The gradient is fp32: 4 bytes per number."),
    ]
    # a slip that is also 8 x the answer names both causes (the unit slips would call it bits)
    bits = "That is a number of bits: give bytes (8 bits each)."  # the unit slip's message (common.Spec)
    pairs = [(v, f"{m} Or, as it is also 8 times the answer: {bits}" if v == 8 * expected else m) for v, m in pairs]
    return Spec("all-reduce bytes", expected, exact=True, in_bytes=True, slips=_slips(*pairs),
                hint="The tensor is the gradient of the P x B gathered embeddings, D fp32 numbers each; a ring "
                     "all-reduce sends 2 (P - 1) / P of a tensor's bytes from each rank.")


def check_embedding_grad_bytes(answer, batch_size: int = 64, embedding_dim: int = 512, world_size: int = 16) -> None:
    """Exercise 10.2: bytes one rank sends in the all-reduce of the gathered embeddings' gradient
    (model-parallel FC, `batch_size` per rank, ring all-reduce as `World` counts it)."""
    _grade(answer, _spec_embedding_grad_bytes(batch_size, embedding_dim, world_size))


def _spec_rank_container_bytes(num_classes: int = 360_232, embedding_dim: int = 512, world_size: int = 32,
                               container_ratio: float = 0.3) -> Spec:
    n, d, p = num_classes, embedding_dim, world_size
    q = int(container_ratio * n)  # container_capacity: floor(ratio * N)
    entry = 4 * d + 8  # D fp32 numbers and an int64 label
    return Spec("container bytes", q * entry, exact=True, in_bytes=True, slips=_slips(
        (q * entry / p, "The container does not shrink with P: every rank enqueues the GCCs of all P ranks, so each "
                        "holds all Q entries."),
        (p * q * entry, "The P ranks' GCCs go into one container of Q entries, the same on every rank: it does not "
                        "grow with P either."),
        (q * 4 * d, "Each entry also has its identity's label, an int64: 8 bytes."),
        (q * (4 * d + 4), "The labels are int64: 8 bytes each, not 4."),
        (container_ratio * n * entry, f"Q is a whole number of entries: floor({container_ratio:g} N)."),
        (n * entry, f"Q is {container_ratio:g} N (the container ratio), not N."),
        (q * (8 * d + 8), "The GCCs are fp32: 4 bytes per number, not 8 (the labels are int64: 8)."),
    ), hint=f"Every rank holds the whole container: Q = floor({container_ratio:g} N) entries, each D fp32 numbers "
            "and one int64 label.")


def check_rank_container_bytes(answer, num_classes: int = 360_232, embedding_dim: int = 512,
                               world_size: int = 32, container_ratio: float = 0.3) -> None:
    """Exercise 10.3: bytes of AttFC's container on one rank of a run over `world_size` processes."""
    _grade(answer, _spec_rank_container_bytes(num_classes, embedding_dim, world_size, container_ratio))
