"""The dynamic class container (DCC): a FIFO queue of generative class centres and their labels.

AttFC has no weight matrix. Its negatives are the GCCs of earlier batches, kept in a queue
of fixed capacity Q: each step's B new GCCs (and their identity labels) overwrite the oldest
B entries. The container holds no gradient and has no optimizer state: its memory is
Q x (D floats + one int64 label), whatever the number of identities N it was sized from.

Unlike the official code, any capacity >= 1 works (it need not be a multiple of B), a batch
larger than the container keeps its newest entries, labels are int64 (float labels stop
being exact above 2^24 identities) and an empty slot has the label -1, so the head can mask
it out instead of treating a random vector as a negative. Entries, labels and the write
pointer are buffers: they are saved and restored with the head's state_dict (checkpoints).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DynamicClassContainer", "EMPTY"]

EMPTY = -1  #: the label of a slot that holds no centre yet


class DynamicClassContainer(nn.Module):
    """A FIFO of `capacity` centres of `embedding_dim` floats, with int64 labels (-1: empty)."""

    def __init__(self, capacity: int, embedding_dim: int) -> None:
        super().__init__()
        for name, value in (("capacity", capacity), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.capacity, self.embedding_dim = int(capacity), int(embedding_dim)
        self.register_buffer("centres", torch.zeros(self.capacity, self.embedding_dim))
        self.register_buffer("labels", torch.full((self.capacity,), EMPTY, dtype=torch.int64))
        # The next slot to write; a tensor so that enqueue never waits for the device.
        self.register_buffer("pointer", torch.zeros((), dtype=torch.int64))
        self._full = False  # once every slot holds a centre it stays so (until reset)

    @torch.no_grad()
    def enqueue(self, centres: torch.Tensor, labels: torch.Tensor) -> None:
        """Write `centres` [n, D] and `labels` [n] over the oldest entries, in order.

        The same as pushing them one by one: with n > capacity only the newest `capacity`
        remain. The pointer advances by n (modulo the capacity).
        """
        if centres.dim() != 2 or centres.shape[1] != self.embedding_dim:
            raise ValueError(f"centres must be [n, embedding_dim={self.embedding_dim}], got {tuple(centres.shape)}")
        if labels.shape != (centres.shape[0],):
            raise ValueError(f"labels must be 1-D with one entry per centre ({centres.shape[0]}), "
                             f"got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer identity ids, got {labels.dtype}")
        n = centres.shape[0]
        if n == 0:
            return
        keep = min(n, self.capacity)
        # Entry j of the batch (j >= n - keep) lands in slot (pointer + j) mod capacity.
        slots = (self.pointer + torch.arange(n - keep, n, device=self.pointer.device)) % self.capacity
        self.centres.index_copy_(0, slots, centres[n - keep:].detach().to(self.centres.dtype))
        self.labels.index_copy_(0, slots, labels[n - keep:].detach().to(torch.int64))
        self.pointer.add_(n).remainder_(self.capacity)

    def is_full(self) -> bool:
        """True when no slot is empty. Looked up on the device until it first holds, then remembered."""
        if not self._full:
            self._full = bool((self.labels != EMPTY).all())
        return self._full

    def _load_from_state_dict(self, *args, **kwargs):
        self._full = False  # the loaded labels decide
        super()._load_from_state_dict(*args, **kwargs)

    def filled(self) -> torch.Tensor:
        """How many slots hold a centre (a 0-d tensor)."""
        return (self.labels != EMPTY).sum()

    def reset(self) -> None:
        """Empty every slot."""
        self.centres.zero_()
        self.labels.fill_(EMPTY)
        self.pointer.zero_()
        self._full = False

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, embedding_dim={self.embedding_dim}"
