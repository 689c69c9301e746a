"""Counting a step's memory and time, whatever the device: unique tensor storages, the tensors a
head step holds between steps, the running total of signed allocation records, a synchronised timer (lesson 02)."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import torch

from ..heads import Head


def _unique_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _held_tensors(head: Head, optimizer, embeddings: torch.Tensor, labels: torch.Tensor,
                  keys: torch.Tensor | None) -> Iterator[torch.Tensor]:
    yield from head.held_tensors().values()
    for p in head.parameters():
        yield p.grad
    if optimizer is not None:
        for state in optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield embeddings
    yield labels
    yield embeddings.grad
    yield keys


def timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of `run`, with the device's queued work waited for on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _running(sizes: Sequence[int], phases: Sequence[str]) -> tuple[list[int], int, dict[str, int]]:
    """Running total of signed allocation sizes, its peak, and the peak within each phase."""
    total, peak, running, phase_peaks = 0, 0, [], {}
    for size, phase in zip(sizes, phases):
        if phase and phase not in phase_peaks:
            phase_peaks[phase] = total  # what is alive when the phase begins counts too
        total += size
        running.append(total)
        peak = max(peak, total)
        if phase:
            phase_peaks[phase] = max(phase_peaks[phase], total)
    return running, peak, phase_peaks
