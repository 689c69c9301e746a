"""The dynamic class container (DCC): a FIFO queue of generative class centres and their labels (lesson 07).

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

from .checks import ArgumentError, as_int

__all__ = ["DynamicClassContainer", "EMPTY", "TurnoverWatch", "plot_turnover"]

EMPTY = -1  #: the label of a slot that holds no centre yet


class ContainerTooLarge(ArgumentError, MemoryError):
    """The container's centres do not fit in memory: a bad capacity (ValueError) and an out-of-memory
    error (MemoryError) alike, so the memory searches see it as the latter."""


class DynamicClassContainer(nn.Module):
    """A FIFO of `capacity` centres of `embedding_dim` floats, with int64 labels (-1: empty)."""

    def __init__(self, capacity: int, embedding_dim: int) -> None:
        super().__init__()
        self.capacity, self.embedding_dim = as_int("capacity", capacity, 1), as_int("embedding_dim", embedding_dim, 1)
        try:
            centres = torch.zeros(self.capacity, self.embedding_dim)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            need = self.capacity * self.embedding_dim * torch.get_default_dtype().itemsize
            raise ContainerTooLarge("capacity", f"is {self.capacity:,}, and its centres (capacity x embedding_dim "
                                                f"= {self.capacity:,} x {self.embedding_dim:,} floats, "
                                                f"{need / 2**30:,.1f} GiB) could not be allocated; give a smaller "
                                                f"capacity (a container holds a share of the identities, e.g. 0.1 "
                                                f"of num_classes). The allocator said: {exc}") from None
        self.register_buffer("centres", centres)
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
        if int(labels.min()) < 0:  # -1 marks an empty slot: a negative label would be lost as one
            raise ArgumentError("labels", f"must be identity ids >= 0, got a minimum of {int(labels.min())}")
        # a nan entry would make every later batch's loss nan; a sum carries nan and inf, with no n x D temporary
        if not bool(torch.isfinite(centres.detach().sum())) and not bool(torch.isfinite(centres).all()):
            raise ArgumentError("centres", f"hold {int((~torch.isfinite(centres)).any(1).sum())} of {n} rows with "
                                           f"nan or inf; nothing was enqueued (find where the non-finite values come "
                                           f"from: the key encoder's weights, or the images)")
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


class TurnoverWatch:
    """A `train(callback=...)` watcher: how an AttFC head's container turns over, step by step.

    After every step it records, in lists of one value per step:
    'own_share', the share of the batch's queries whose identity had an entry in the
    container the batch was scored against (the entries the mask removes), 'own_entries',
    their mean number per query, 'filled' (share of slots holding a centre),
    'identities_present' (share of the `num_classes` identities with an entry),
    'mean_age' and 'max_age' of the entries the next batch is scored against, in steps (1:
    written by the step just taken).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = as_int("num_classes", num_classes, 1)  # the training identities
        self.steps, self.own_share, self.own_entries, self.filled = [], [], [], []
        self.identities_present, self.mean_age, self.max_age = [], [], []
        self._before: torch.Tensor | None = None  # the labels the next batch is scored against
        self._written: torch.Tensor | None = None  # the step that wrote each slot (-1: never)

    def __call__(self, state: dict) -> None:
        container = getattr(state["head"], "container", None)
        if not isinstance(container, DynamicClassContainer):
            raise ValueError("TurnoverWatch watches an AttFC run: the head has no container (train with head='attfc')")
        labels, step = state["labels"].detach().cpu().long(), int(state["step"])
        now = container.labels.detach().cpu()
        if self._before is None:
            self._before = torch.full_like(now, EMPTY)
            self._written = torch.full(now.shape, -1, dtype=torch.int64)
        hits = (self._before[None, :] == labels[:, None]).sum(1)
        # The slots this step wrote: the pointer ran over them, newest `capacity` of the batch.
        n = min(labels.numel(), container.capacity)
        end = int(container.pointer)
        self._written[(end - n + torch.arange(n)) % container.capacity] = step
        full = now != EMPTY
        ages = (step + 1 - self._written[full]).double()
        self.steps.append(step)
        self.own_share.append(float((hits > 0).double().mean()))
        self.own_entries.append(float(hits.double().mean()))
        self.filled.append(float(full.double().mean()))
        self.identities_present.append(int(now[full].unique().numel()) / self.num_classes)
        self.mean_age.append(float(ages.mean()) if ages.numel() else 0.0)
        self.max_age.append(int(ages.max()) if ages.numel() else 0)
        self._before = now.clone()

    def summary(self, skip: int | None = None) -> dict:
        """Means over the steps after the container first filled (or after `skip` steps)."""
        if not self.steps:
            raise ValueError("no step recorded yet: pass the watcher to train(callback=...) first")
        if skip is None:
            skip = next((i + 1 for i, f in enumerate(self.filled) if f >= 1.0), len(self.steps))
        tail = slice(min(skip, len(self.steps) - 1), None)

        def mean(values):
            part = values[tail]
            return sum(part) / len(part)

        return {"steps": len(self.steps), "from_step": self.steps[tail][0], "own_share": mean(self.own_share),
                "own_entries": mean(self.own_entries), "identities_present": mean(self.identities_present),
                "mean_age": mean(self.mean_age), "max_age": max(self.max_age[tail])}


def plot_turnover(watch: TurnoverWatch, expected_present: float | None = None, axes=None):
    """Two panels: identities present and queries meeting their own identity, per step; entry age."""
    import matplotlib.pyplot as plt

    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3.4))[1]
    ax, ax_age = axes
    ax.plot(watch.steps, watch.identities_present, lw=1, label="identities with an entry (share of N)")
    ax.plot(watch.steps, watch.own_share, lw=1, alpha=0.8, label="queries whose own identity is in it (masked)")
    if expected_present is not None:
        ax.axhline(expected_present, color="0.3", ls="--", lw=1,
                   label=f"1 - (1 - 1/N)^Q = {expected_present:.3f}")
    ax.set_ylim(0, max(0.05, 1.3 * max(max(watch.identities_present), max(watch.own_share))))
    ax.set_xlabel("training step")
    ax.set_ylabel("share")
    ax.set_title("who is in the container", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax_age.plot(watch.steps, watch.mean_age, lw=1, label="mean age of the entries")
    ax_age.plot(watch.steps, watch.max_age, lw=1, label="oldest entry")
    ax_age.set_xlabel("training step")
    ax_age.set_ylabel("age when used (steps)")
    ax_age.set_title("how stale the negatives are", fontsize=10)
    ax_age.legend(fontsize=8)
    ax_age.grid(alpha=0.3)
    return axes
