"""Measuring on the CPU: one step run under torch.profiler (profile_memory=True), read back as the
allocation and free records of PyTorch's CPU allocator, each with its phase mark, ops and shape (lesson 02)."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch


_MARK = "attfc_lite.memory:"


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs timestamped lines there."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_SPLIT = "attfc_lite.memory.split:"  # not a _MARK: the measured phase goes on, the model's changes


@dataclass
class _CpuProfile:
    """What one profiled CPU step left: allocation records in time order, the step's start, the
    model-phase splits seen, and (with record_shapes) the shape and dtype of each allocation."""

    records: list[dict[str, Any]]
    t0: int
    splits: list[tuple[int, str]]
    shapes: dict[int, tuple[tuple[int, ...], torch.dtype]]


def _profile_cpu(run: Callable[..., Any], split: bool = False, record_shapes: bool = False) -> _CpuProfile:
    """Run `run(mark)` (or `run(mark, split)`) under torch.profiler with profile_memory=True and
    read the raw event tree: every CPU allocation and free with its signed size, the innermost
    phase mark around it, the ops it happened in (outermost first) and its allocation id."""
    from torch.profiler import ProfilerActivity, profile, record_function

    try:
        from torch._C._profiler import _EventType
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise RuntimeError("this torch build's profiler exposes no allocation events; use torch >= 2.1") from exc

    def mark(name: str):
        return record_function(_MARK + name)

    def split_here(name: str) -> None:
        with record_function(_SPLIT + name):  # a zero-length event: its start time is the split
            pass

    with _quiet_stderr_fd():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=record_shapes) as prof:
            if split:
                run(mark, split_here)
            else:
                run(mark)
        tree = prof.profiler.kineto_results.experimental_event_tree()
    # The raw event tree (what torch.profiler's own memory profiler reads) lists every
    # allocation and free with its signed size, nested under the op that made it.
    records: list[dict[str, Any]] = []
    starts: list[int] = []
    splits: list[tuple[int, str]] = []
    seen: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}  # allocation id -> first (time, shape, dtype)

    def walk(nodes, phase: str, stack: tuple[str, ...]) -> None:
        for node in nodes:
            name = node.name
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                if fields.device.type == "cpu":
                    records.append(dict(t_ns=node.start_time_ns, size=int(fields.alloc_size),
                                        alloc_id=fields.allocation_id, phase=phase, stack=stack))
                continue
            if name.startswith(_MARK):
                starts.append(node.start_time_ns)
                walk(node.children, name[len(_MARK):], ())
                continue
            if name.startswith(_SPLIT):
                splits.append((node.start_time_ns, name[len(_SPLIT):]))
                continue
            if record_shapes and node.tag == _EventType.TorchOp:
                for arg in node.extra_fields.inputs:
                    alloc_id = getattr(arg, "allocation_id", None)
                    sizes = getattr(arg, "sizes", None)
                    if alloc_id is None or sizes is None:
                        continue
                    first = seen.setdefault(int(alloc_id), (node.start_time_ns, tuple(sizes), arg.dtype))
                    if node.start_time_ns < first[0]:
                        seen[int(alloc_id)] = (node.start_time_ns, tuple(sizes), arg.dtype)
            walk(node.children, phase, stack + (name,))

    walk(tree, "", ())
    records.sort(key=lambda r: r["t_ns"])
    t0 = min(starts) if starts else (records[0]["t_ns"] if records else 0)
    return _CpuProfile(records=records, t0=t0, splits=sorted(splits),
                       shapes={k: (v[1], v[2]) for k, v in seen.items()})


def _split_indices(times_ns: Sequence[int], splits: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """(index of the first record at or after each split, its model phase), in order."""
    out, i = [], 0
    for t, name in splits:
        while i < len(times_ns) and times_ns[i] < t:
            i += 1
        out.append((i, name))
    return out


def _profile_cpu_step(run: Callable[..., Any],
                      split_marks: list | None = None) -> tuple[list[float], list[int], list[str]]:
    """Allocation records of one step from torch.profiler, in order: (ms, signed bytes, phase).

    With a list `split_marks`, `run` is called as `run(mark, split)` and the list receives
    (index of the first record of the model phase, its name) for each `split(name)` call."""
    prof = _profile_cpu(run, split=split_marks is not None)
    recs = prof.records
    if split_marks is not None:
        split_marks[:] = _split_indices([r["t_ns"] for r in recs], prof.splits)
    return ([(r["t_ns"] - prof.t0) / 1e6 for r in recs], [r["size"] for r in recs], [r["phase"] for r in recs])
