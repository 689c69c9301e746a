"""Measuring one head training step: the CUDA allocator or the CPU profiler's allocation records."""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..heads import Head, make_head
from .model import OPTIMIZERS, _positive_int, _unit_scale, dtype_name, predict_memory

# --------------------------------------------------------------------------- measurement


@dataclass
class StepMeasurement:
    """A measured training step of a head.

    `held_bytes`: tensors alive before the step (W, optimizer state, inputs), summed from the
    real tensors. `step_peak_bytes`: the peak of allocations above that during the step, from
    the allocator (CUDA) or the profiler's allocation records (CPU). `peak_bytes` =
    held + step peak, comparable with `MemoryBreakdown.peak`. The timeline is bytes above held
    at each allocation or free, in milliseconds from the step's start (on CUDA the host time
    of the allocator call: kernels run asynchronously, and the phase marks synchronise).

    What is counted: on CUDA, `allocator_peak_bytes` is the peak of memory handed out to
    tensors (`max_memory_allocated`), and `reserved_peak_bytes` the peak the caching allocator
    held from the driver (`max_memory_reserved`): cached blocks and fragmentation included,
    and the one an out-of-memory is raised against; neither counts the CUDA context. On the CPU
    the profiler counts PyTorch's tensor allocations only (the process's resident memory also
    holds the interpreter, libraries and the allocator's slack): `reserved_peak_bytes` is None.
    """

    device: str
    method: str
    config: dict[str, Any]
    held_bytes: int
    step_peak_bytes: int
    peak_bytes: int
    phase_peaks: dict[str, int]
    step_seconds: float | None
    timeline_ms: list[float] = field(repr=False)
    timeline_bytes: list[int] = field(repr=False)
    timeline_phase: list[str] = field(repr=False)
    steady_state: bool = True
    allocator_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None

    def as_dict(self, timeline: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not timeline:
            for key in ("timeline_ms", "timeline_bytes", "timeline_phase"):
                out.pop(key)
        return out


def make_optimizer(
    params: Sequence[torch.nn.Parameter], optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer | None:
    """The optimizer of a head step (None when the head has no trainable parameters)."""
    params = [p for p in params if p.requires_grad]
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not params:
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def head_dtype(head: Head) -> torch.dtype:
    """The floating dtype of a head's parameters, or of its buffers when it has none (AttFC)."""
    for t in list(head.parameters()) + list(head.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def step_inputs(head: Head, batch_size: int, device: torch.device,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What a backbone would hand the head: embeddings [B, D] (requiring grad), labels [B] and,
    for a head with `num_keys` K (AttFC), the key encoder's embeddings [B, K, D] (no grad)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = head_dtype(head)
    embeddings = torch.randn(batch_size, head.embedding_dim, generator=gen).to(device=device, dtype=dtype)
    labels = torch.randint(0, head.num_classes, (batch_size,), generator=gen).to(device)
    keys = None
    if head.num_keys:
        keys = torch.randn(batch_size, head.num_keys, head.embedding_dim, generator=gen).to(device=device, dtype=dtype)
    return embeddings.requires_grad_(True), labels, keys


def head_step(
    head: Head,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    mark: Callable[[str], contextlib.AbstractContextManager] | None = None,
    keys: torch.Tensor | None = None,
) -> float:
    """One training step of the head alone; `mark(phase)` wraps forward, backward and optimizer.

    Gradients are set to None afterwards (PyTorch's default), so W.grad exists only inside
    the step. `keys`: the key embeddings of a head that needs them (AttFC). Returns the loss.
    """
    mark = mark or (lambda name: contextlib.nullcontext())
    with mark("forward"):
        loss = head(embeddings, labels) if keys is None else head(embeddings, labels, keys)
    with mark("backward"):
        loss.backward()
    with mark("optimizer"):
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            head.zero_grad(set_to_none=True)
        embeddings.grad = None
    return float(loss.detach())


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


def _profile_cpu_step(run: Callable[[Callable], Any]) -> tuple[list[float], list[int], list[str]]:
    """Allocation records of one step from torch.profiler, in order: (ms, signed bytes, phase)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    try:
        from torch._C._profiler import _EventType
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise RuntimeError("this torch build's profiler exposes no allocation events; use torch >= 2.1") from exc

    with _quiet_stderr_fd():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(lambda name: record_function(_MARK + name))
        tree = prof.profiler.kineto_results.experimental_event_tree()
    # The raw event tree (what torch.profiler's own memory profiler reads) lists every
    # allocation and free with its signed size, nested under the op that made it.
    records: list[tuple[int, int, str]] = []
    starts: list[int] = []

    def walk(nodes, phase: str) -> None:
        for node in nodes:
            name = node.name
            if name.startswith(_MARK):
                phase_here = name[len(_MARK):]
                starts.append(node.start_time_ns)
            else:
                phase_here = phase
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                if fields.device.type == "cpu":
                    records.append((node.start_time_ns, int(fields.alloc_size), phase_here))
            walk(node.children, phase_here)

    walk(tree, "")
    records.sort(key=lambda r: r[0])
    t0 = min(starts) if starts else (records[0][0] if records else 0)
    return [(r[0] - t0) / 1e6 for r in records], [r[1] for r in records], [r[2] for r in records]


def _trace_cuda_step(run: Callable[[Callable], Any], device: torch.device) -> tuple[list[float], list[int], list[str], int, int]:
    """Allocator history of one step on CUDA: (ms, signed bytes, phase), the allocated peak above
    the start and the peak reserved from the driver (absolute)."""
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

    try:
        run(mark)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        reserved = torch.cuda.max_memory_reserved(device)
        trace = torch.cuda.memory._snapshot()["device_traces"][index]
    finally:
        record(enabled=None)
    times, sizes, phases = [], [], []
    phase, b = "", 0
    t0 = None
    start = boundaries[0][0] if boundaries else 0
    for i, entry in enumerate(trace):
        if i < start:  # history from before the step
            continue
        while b < len(boundaries) and boundaries[b][0] <= i:
            phase = boundaries[b][1]
            b += 1
        stamp = entry.get("time_us", i * 1000.0)
        t0 = stamp if t0 is None else t0
        action = entry.get("action")
        if action not in ("alloc", "free_completed"):
            continue
        times.append((stamp - t0) / 1000.0)
        sizes.append(int(entry["size"]) if action == "alloc" else -int(entry["size"]))
        phases.append(phase)
    return times, sizes, phases, int(peak), int(reserved)


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


def measure_head_step(
    head: Head,
    batch_size: int = 128,
    optimizer: str = "sgd",
    device: str | torch.device | None = None,
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 1,
    time_step: bool = True,
    seed: int = 0,
) -> StepMeasurement:
    """Measure one steady-state training step of `head` (any `Head`).

    `warmup_steps` steps run first (the first creates the optimizer state), then one timed
    step when `time_step`, then the measured step. CUDA: peak from
    `torch.cuda.max_memory_allocated`, timeline from the allocator's history. CPU: the
    running sum of the profiler's allocation records, which are the CPU allocator's own
    allocations and frees.
    """
    from ..utils import default_device

    if not isinstance(head, Head):
        raise TypeError(f"head must be an attfc_lite.heads.Head, got {type(head).__name__}")
    b = _positive_int("batch_size", batch_size)
    warmup_steps = _positive_int("warmup_steps", warmup_steps, 0)
    dev = default_device(device)
    head = head.to(dev)
    params = list(head.parameters())
    dtype = head_dtype(head)
    embeddings, labels, keys = step_inputs(head, b, dev, seed)
    opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def run(mark=None) -> None:
        head_step(head, embeddings, labels, opt, mark, keys)

    for _ in range(warmup_steps):
        run()
    step_seconds = timed(run, dev) if time_step else None
    gc.collect()
    held = _unique_bytes(_held_tensors(head, opt, embeddings, labels, keys))
    allocator_peak = reserved_peak = None
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev)
        times, sizes, phases, step_peak, reserved_peak = _trace_cuda_step(run, dev)
        allocator_peak = before + step_peak
        running, _, phase_peaks = _running(sizes, phases)
        method = ("cuda allocator: max_memory_allocated (tensors; max_memory_reserved, what an out-of-memory is "
                  "raised against, is reported beside it), timeline from _record_memory_history")
    else:
        times, sizes, phases = _profile_cpu_step(run)
        running, step_peak, phase_peaks = _running(sizes, phases)
        method = ("cpu: torch.profiler allocation records (profile_memory=True): PyTorch's tensor allocations, "
                  "not the process's resident memory")
    config = dict(
        head=type(head).__name__, num_classes=head.num_classes, embedding_dim=head.embedding_dim, batch_size=b,
        dtype=dtype_name(dtype), optimizer=str(optimizer).lower(), momentum=momentum, weight_decay=weight_decay,
    )
    return StepMeasurement(
        device=str(dev), method=method, config=config, held_bytes=held, step_peak_bytes=int(step_peak),
        peak_bytes=held + int(step_peak), phase_peaks=phase_peaks, step_seconds=step_seconds,
        timeline_ms=times, timeline_bytes=running, timeline_phase=phases,
        steady_state=warmup_steps > 0, allocator_peak_bytes=allocator_peak, reserved_peak_bytes=reserved_peak,
    )


_MODEL_KNOBS = ("sample_rate", "container_size", "container_ratio", "num_keys", "backbone_params",
                "key_activation_bytes", "momentum", "weight_decay")
_MODEL_ONLY = ("backbone_params", "key_activation_bytes", "momentum",
               "weight_decay")


def build_head(head: str, num_classes: int, embedding_dim: int = 512, dtype: str = "float32", **head_kwargs) -> Head:
    """`make_head(head, ...)` in `dtype`, dropping the knobs that only the memory model reads."""
    kwargs = {k: v for k, v in head_kwargs.items() if k not in _MODEL_ONLY}
    try:
        built = make_head(head, embedding_dim, num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"head {head!r} does not take the options {sorted(kwargs)}: {exc}; drop them") from exc
    return built.to(getattr(torch, dtype_name(dtype)))


def memory_report(
    head: str = "fc",
    num_classes: int | None = None,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str | None = None,
    measure: bool = True,
    **head_kwargs: Any,
) -> dict[str, Any]:
    """Predicted and measured memory of one head step, as one JSON-serialisable dict.

    Keys: the configuration, `predicted` (named byte counts with `held`, `step_peak`,
    `peak`), `predicted_peak_phase`, `formulas`, `measured_peak_bytes` (held + step peak),
    `measured_step_peak_bytes`, `measured_held_bytes`, `measured_reserved_peak_bytes` (CUDA:
    the caching allocator's reserved peak, what an out-of-memory is raised against; None on
    the CPU), `relative_error` of the peak and `step_relative_error`, `step_seconds`, `method`. With `measure=False` the measured
    entries are None. `head_kwargs` go to the head (e.g. margin) and to the model
    (sample_rate, container_size, num_keys, backbone_params, momentum, weight_decay).
    """
    if num_classes is None:
        raise ValueError("num_classes is required: the number of identities N, e.g. num_classes=100000")
    model_kwargs = {k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS}
    pred = predict_memory(num_classes, embedding_dim, batch_size, dtype, optimizer, head, **model_kwargs)
    report: dict[str, Any] = dict(pred.config)
    report.update(
        predicted=pred.as_dict(), predicted_peak_phase=pred.peak_phase, formulas=pred.formulas,
        device=None, measured_peak_bytes=None, measured_step_peak_bytes=None, measured_held_bytes=None,
        measured_phase_peaks=None, measured_reserved_peak_bytes=None, relative_error=None, step_relative_error=None, step_seconds=None,
        method=None, steady_state=None,
    )
    if not measure:
        return report
    built = build_head(head, num_classes, embedding_dim, dtype, **head_kwargs)
    opt_kwargs = {k: head_kwargs[k] for k in ("momentum", "weight_decay") if k in head_kwargs}
    meas = measure_head_step(built, batch_size, optimizer, device, **opt_kwargs)
    del built
    gc.collect()
    report.update(
        device=meas.device,
        measured_peak_bytes=meas.peak_bytes,
        measured_step_peak_bytes=meas.step_peak_bytes,
        measured_held_bytes=meas.held_bytes,
        measured_phase_peaks=meas.phase_peaks,
        measured_reserved_peak_bytes=meas.reserved_peak_bytes,
        relative_error=(pred.peak - meas.peak_bytes) / meas.peak_bytes,
        step_relative_error=(pred.step_peak - meas.step_peak_bytes) / max(meas.step_peak_bytes, 1),
        step_seconds=meas.step_seconds,
        method=meas.method,
        steady_state=meas.steady_state,
    )
    return report


def agreement_table(
    num_classes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000),
    embedding_dim: int = 512,
    batch_size: int = 128,
    head: str = "fc",
    device: str | None = "cpu",
    progress: Callable[[dict], None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Predicted vs measured peak for each N, one `memory_report` per row (run one at a time)."""
    rows = []
    for n in num_classes:
        r = memory_report(head, int(n), embedding_dim, batch_size, device=device, **kwargs)
        row = dict(
            num_classes=int(n), predicted_peak=r["predicted"]["peak"], measured_peak=r["measured_peak_bytes"],
            error=r["relative_error"], predicted_step_peak=r["predicted"]["step_peak"],
            measured_step_peak=r["measured_step_peak_bytes"], step_error=r["step_relative_error"],
            step_seconds=r["step_seconds"], device=r["device"],
        )
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def format_agreement(rows: Sequence[Mapping[str, Any]], unit: str = "MiB", digits: int = 1) -> str:
    """The agreement table as text: N, predicted and measured peak, relative error (also of the step alone)."""
    scale = _unit_scale(unit)
    head = (f"{'N':>10} {'predicted ' + unit:>16} {'measured ' + unit:>15} {'error':>8}   "
            f"{'step pred.':>11} {'step meas.':>11} {'error':>8}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['num_classes']:>10,} {r['predicted_peak'] / scale:>16,.{digits}f} {r['measured_peak'] / scale:>15,.{digits}f} "
            f"{r['error']:>+8.1%}   {r['predicted_step_peak'] / scale:>11,.{digits}f} "
            f"{r['measured_step_peak'] / scale:>11,.{digits}f} {r['step_error']:>+8.1%}"
        )
    return "\n".join(lines)

