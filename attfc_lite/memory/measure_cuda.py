"""Measuring on CUDA: one step's allocations and frees from the caching allocator's history
(`_record_memory_history`), split into phases, with the allocated and reserved peaks (lesson 02)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


def _trace_cuda_step(run: Callable[..., Any], device: torch.device,
                     split_marks: list | None = None) -> tuple[list[float], list[int], list[str], int, int]:
    """Allocator history of one step on CUDA: (ms, signed bytes, phase), the allocated peak above
    the start and the peak reserved from the driver (absolute).

    With a list `split_marks`, `run` is called as `run(mark, split)` and the list receives
    (index of the first record of the model phase, its name) for each `split(name)` call."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    record = torch.cuda.memory._record_memory_history
    try:
        record(enabled="all", context=None, max_entries=1_000_000, clear_history=True)
    except TypeError:  # torch without clear_history: the trace is split at `start` below
        record(enabled="all", context=None, max_entries=1_000_000)
    index = device.index if device.index is not None else torch.cuda.current_device()
    boundaries: list[tuple[int, str]] = []

    @contextlib.contextmanager
    def mark(name: str):
        torch.cuda.synchronize(device)
        # A snapshot lists the history so far: its length splits the trace into phases.
        boundaries.append((len(torch.cuda.memory._snapshot()["device_traces"][index]), name))
        yield
        torch.cuda.synchronize(device)

    splits: list[tuple[int, str]] = []

    def split(name: str) -> None:  # called from autograd's device thread, between two nodes
        torch.cuda.synchronize(device)
        splits.append((len(torch.cuda.memory._snapshot()["device_traces"][index]), name))

    try:
        if split_marks is None:
            run(mark)
        else:
            run(mark, split)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        reserved = torch.cuda.max_memory_reserved(device)
        trace = torch.cuda.memory._snapshot()["device_traces"][index]
    finally:
        record(enabled=None)
    times, sizes, phases = [], [], []
    phase, b, k = "", 0, 0
    t0 = None
    start = boundaries[0][0] if boundaries else 0
    for i, entry in enumerate(trace):
        if i < start:  # history from before the step
            continue
        while b < len(boundaries) and boundaries[b][0] <= i:
            phase = boundaries[b][1]
            b += 1
        while k < len(splits) and splits[k][0] <= i:
            if split_marks is not None:
                split_marks.append((len(times), splits[k][1]))
            k += 1
        stamp = entry.get("time_us", i * 1000.0)
        t0 = stamp if t0 is None else t0
        action = entry.get("action")
        if action not in ("alloc", "free_completed"):
            continue
        times.append((stamp - t0) / 1000.0)
        sizes.append(int(entry["size"]) if action == "alloc" else -int(entry["size"]))
        phases.append(phase)
    return times, sizes, phases, int(peak), int(reserved)
