"""Measuring one head training step: the CUDA allocator or the CPU profiler's allocation records."""
from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..checks import ArgumentError, as_bool, as_device, as_float, as_int
from ..heads import Head, make_head
from . import guard
from .model import _unit_scale, check_optimizer, dtype_name, predict_memory

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

    `timeline_model_phase`: the memory model's phase of each timeline entry (`model.HEAD_PHASES`:
    for FC forward, backward: logits, backward: centres, optimizer). The record_function marks
    give the three measured phases; a backward phase the model splits starts where autograd
    reaches the node that begins it (`_model_phase_hooks`). A measured phase the hooks cannot
    split keeps the names of all the model phases it covers, joined by " + ". Empty when unknown.

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
    timeline_model_phase: list[str] = field(default_factory=list, repr=False)

    def as_dict(self, timeline: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not timeline:
            for key in ("timeline_ms", "timeline_bytes", "timeline_phase", "timeline_model_phase"):
                out.pop(key)
        return out


def make_optimizer(
    params: Sequence[torch.nn.Parameter], optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer | None:
    """The optimizer of a head step (None when the head has no trainable parameters)."""
    params = [p for p in params if p.requires_grad]
    name, momentum, weight_decay = check_optimizer(optimizer, momentum, weight_decay)
    lr = as_float("lr", lr, 0, low_open=True)
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


def _autograd_graph(root) -> list:
    """Every autograd node reachable from `root` (a loss's grad_fn), parents before children."""
    nodes, seen, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        todo.extend(child for child, _ in node.next_functions)
    return nodes


def _split_nodes(loss: torch.Tensor, params: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
                 names: Sequence[str]) -> dict[str, list]:
    """The autograd nodes where the model's backward phases `names` begin.

    'backward: centres' begins where the gradient branches off towards the class centres: a
    node from which both a head parameter and an input embedding are reached, with a child that
    reaches the parameter alone (FC's and Partial FC's `mm` of the cosines). 'backward:
    scatter' begins at a node on the parameter's side that feeds the parameter itself (Partial
    FC's gather `W[index]`, whose backward scatters into a dense N x D gradient)."""
    if loss is None or loss.grad_fn is None or not params or not inputs:
        return {}
    nodes = _autograd_graph(loss.grad_fn)
    param_ids = {id(p) for p in params}
    input_ids = {id(x) for x in inputs}

    def leaf_of(node, ids) -> bool:
        var = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        return var is not None and id(var) in ids

    reach_w: dict[int, bool] = {}
    reach_x: dict[int, bool] = {}
    changed = True  # the node order is not a topological one: iterate to a fixed point
    while changed:
        changed = False
        for node in reversed(nodes):  # mostly children first: few rounds
            kids = [c for c, _ in node.next_functions if c is not None]
            w = leaf_of(node, param_ids) or any(reach_w.get(id(c), False) for c in kids)
            x = leaf_of(node, input_ids) or any(reach_x.get(id(c), False) for c in kids)
            if (w, x) != (reach_w.get(id(node), False), reach_x.get(id(node), False)):
                reach_w[id(node)], reach_x[id(node)] = w, x
                changed = True
    found: dict[str, list] = {}
    for node in nodes:
        kids = [c for c, _ in node.next_functions if c is not None]
        w, x = reach_w.get(id(node), False), reach_x.get(id(node), False)
        if "backward: centres" in names and w and x and any(
                reach_w.get(id(c), False) and not reach_x.get(id(c), False) for c in kids):
            found.setdefault("backward: centres", []).append(node)
        if "backward: scatter" in names and w and not x and not leaf_of(node, param_ids) and any(
                leaf_of(c, param_ids) for c in kids):
            found.setdefault("backward: scatter", []).append(node)
    return found


def _split_phase_names(kind: str) -> list[str]:
    """The model phases that begin inside a measured phase (not at its start): the ones to find."""
    from .model import HEAD_PHASES, MEASURED_PHASES

    names, firsts = [], set()
    for phase in HEAD_PHASES[kind]:
        measured = next((m for m, covered in MEASURED_PHASES.items() if phase in covered), None)
        if measured in firsts:
            names.append(phase)
        firsts.add(measured)
    return names


@contextlib.contextmanager
def _model_phase_hooks(head: Head, kind: str, split: Callable[[str], None] | None) -> Iterator[None]:
    """While active, each forward of `head` hooks `split(name)` onto the autograd nodes where the
    model's backward phases begin (`_split_nodes`); each name fires once per backward."""
    names = _split_phase_names(kind)
    if split is None or not names:
        yield
        return
    params = [p for p in head.parameters() if p.requires_grad]

    def on_forward(module, args, output) -> None:
        loss = output if isinstance(output, torch.Tensor) else None
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        fired: set[str] = set()
        for name, nodes in _split_nodes(loss, params, inputs, names).items():
            def prehook(grad_outputs, name=name):
                if name not in fired:
                    fired.add(name)
                    split(name)
            for node in nodes:
                node.register_prehook(prehook)

    handle = head.register_forward_hook(on_forward)
    try:
        yield
    finally:
        handle.remove()


def _model_phase_labels(phases: Sequence[str], split_marks: Sequence[tuple[int, str]], kind: str) -> list[str]:
    """The model's phase of each record, from its measured phase and the splits seen.

    A measured phase starts in the first model phase it covers; each split moves on to the named
    phase. Model phases of a measured phase that no split separated share its records, and the
    label names them all ('forward: attention + forward: container')."""
    from .model import HEAD_PHASES, MEASURED_PHASES

    model = list(HEAD_PHASES[kind])
    covered = {m: [p for p in model if p in names] for m, names in MEASURED_PHASES.items()}
    seen = {name for _, name in split_marks}
    at = {i: name for i, name in split_marks}
    labels: list[str] = []
    current, last_measured = "", None
    for i, measured in enumerate(phases):
        group = covered.get(measured, [])
        starts = [p for p in group if p == group[0] or p in seen]  # the phases that begin somewhere
        if measured != last_measured:
            last_measured = measured
            current = _joined(group, starts, group[0]) if group else measured
        if i in at and at[i] in group:
            current = _joined(group, starts, at[i])
        labels.append(current)
    return labels


def _joined(group: Sequence[str], starts: Sequence[str], start: str) -> str:
    """The model phases from `start` up to the next phase that has a start of its own, joined."""
    i = list(group).index(start)
    out = [start]
    for p in group[i + 1:]:
        if p in starts:
            break
        out.append(p)
    return " + ".join(out)


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
    max_share: float | None = None,
) -> StepMeasurement:
    """Measure one steady-state training step of `head` (any `Head`); refused before allocating
    when the model's predicted peak exceeds `max_share` of what the device has available
    (`guard.check_fits`).

    `warmup_steps` steps run first (the first creates the optimizer state), then one timed
    step when `time_step`, then the measured step. CUDA: peak from
    `torch.cuda.max_memory_allocated`, timeline from the allocator's history. CPU: the
    running sum of the profiler's allocation records, which are the CPU allocator's own
    allocations and frees.
    """
    if not isinstance(head, Head):
        raise TypeError(f"head must be an attfc_lite.heads.Head, got {type(head).__name__}")
    b = as_int("batch_size", batch_size, 1)
    warmup_steps = as_int("warmup_steps", warmup_steps, 0)
    optimizer, momentum, weight_decay = check_optimizer(optimizer, momentum, weight_decay)
    lr = as_float("lr", lr, 0, low_open=True)
    time_step = as_bool("time_step", time_step)
    seed = as_int("seed", seed, 0)
    dev = _device(device)
    kind = _head_kind(head)
    if kind is not None:  # a head the model knows: refuse a step that cannot fit, before its first tensor
        knobs: dict[str, Any] = {}
        if kind == "partial_fc":
            knobs["sample_rate"] = head.sample_rate
        elif kind == "attfc":
            knobs.update(container_size=head.container.capacity, num_keys=head.num_keys)
        pred = predict_memory(head.num_classes, head.embedding_dim, b, head_dtype(head), optimizer, kind,
                              momentum=momentum, weight_decay=weight_decay, **knobs)
        # what the head already holds on that device is taken already; the rest is still to come
        there = _unique_bytes(t for t in head.held_tensors().values() if t.device.type == dev.type)
        guard.check_fits(pred.peak - there, dev, None, _sizes_text(pred, kind),
                         "predict_memory(...) gives the prediction without allocating.", max_share=max_share)
    head = head.to(dev)
    params = list(head.parameters())
    dtype = head_dtype(head)
    embeddings, labels, keys = step_inputs(head, b, dev, seed)
    opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def run(mark=None, split=None) -> None:
        with _model_phase_hooks(head, kind, split) if kind else contextlib.nullcontext():
            head_step(head, embeddings, labels, opt, mark, keys)

    for _ in range(warmup_steps):
        run()
    step_seconds = timed(run, dev) if time_step else None
    gc.collect()
    held = _unique_bytes(_held_tensors(head, opt, embeddings, labels, keys))
    allocator_peak = reserved_peak = None
    split_marks: list[tuple[int, str]] = []
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev)
        times, sizes, phases, step_peak, reserved_peak = _trace_cuda_step(run, dev, split_marks)
        allocator_peak = before + step_peak
        running, _, phase_peaks = _running(sizes, phases)
        method = ("cuda allocator: max_memory_allocated (tensors; max_memory_reserved, what an out-of-memory is "
                  "raised against, is reported beside it), timeline from _record_memory_history")
    else:
        times, sizes, phases = _profile_cpu_step(run, split_marks)
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
        timeline_model_phase=_model_phase_labels(phases, split_marks, kind) if kind else [],
    )


def _device(device) -> torch.device:
    """The torch.device of a device argument: None / 'auto' (CUDA when present), 'cpu', 'cuda[:N]'."""
    from ..utils import default_device

    return default_device(None if device is None else as_device("device", device))


def _sizes_text(pred, kind: str) -> str:
    cfg = pred.config
    return (f"N = {cfg['num_classes']:,}, D = {cfg['embedding_dim']:,}, B = {cfg['batch_size']:,}: one {kind} "
            f"head step")


def _head_kind(head: Head) -> str | None:
    """The memory model's name of a head ('fc', 'partial_fc', 'attfc'), None for another class."""
    from ..heads import HEADS

    names = {cls: name for name, cls in HEADS.items()}
    for cls in type(head).__mro__:  # a subclass counts as the head it extends
        if cls in names:
            return names[cls]
    return None


_MODEL_KNOBS = ("sample_rate", "container_size", "container_ratio", "num_keys", "backbone_params",
                "key_activation_bytes", "momentum", "weight_decay")
_MODEL_ONLY = ("backbone_params", "key_activation_bytes", "momentum",
               "weight_decay")


def build_head(head: str, num_classes: int, embedding_dim: int = 512, dtype: str = "float32", **head_kwargs) -> Head:
    """`make_head(head, ...)` in `dtype`, dropping the knobs that only the memory model reads."""
    kwargs = {k: v for k, v in head_kwargs.items() if k not in _MODEL_ONLY}
    num_classes = as_int("num_classes", num_classes, 2)
    embedding_dim = as_int("embedding_dim", embedding_dim, 1)
    dtype = getattr(torch, dtype_name(dtype))
    try:
        built = make_head(head, embedding_dim, num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"head {head!r} does not take the options {sorted(kwargs)}: {exc}; drop them") from exc
    return built.to(dtype)


def memory_report(
    head: str = "fc",
    num_classes: int | None = None,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str | None = None,
    measure: bool = True,
    max_share: float | None = None,
    **head_kwargs: Any,
) -> dict[str, Any]:
    """Predicted and measured memory of one head step, as one JSON-serialisable dict.

    Keys: the configuration, `predicted` (named byte counts with `held`, `step_peak`,
    `peak`), `predicted_peak_phase`, `formulas`, `measured_peak_bytes` (held + step peak),
    `measured_step_peak_bytes`, `measured_held_bytes`, `measured_reserved_peak_bytes` (CUDA:
    the caching allocator's reserved peak, what an out-of-memory is raised against; None on
    the CPU), `relative_error` of the peak and `step_relative_error`, `step_seconds`, `method`.
    With `measure=False` the measured entries are None. No value is nan or inf (a ratio that
    cannot be formed is None): `json.dumps(report, allow_nan=False)` holds. `head_kwargs` go to
    the head (e.g. margin) and to the model (sample_rate, container_size, num_keys,
    backbone_params, momentum, weight_decay).

    Before measuring, the predicted peak is compared with the device's available memory
    (`guard.check_fits`): past `max_share` of it (by default `SAFE_SHARE`: three quarters on the
    CPU, nine tenths on CUDA) a ValueError says how much is needed and available, and nothing
    is allocated.
    """
    if num_classes is None:
        raise ArgumentError("num_classes", "is required: the number of identities N, e.g. num_classes=100000")
    measure = as_bool("measure", measure)
    max_share = guard.check_share(max_share)
    model_kwargs = {k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS}
    pred = predict_memory(num_classes, embedding_dim, batch_size, dtype, optimizer, head, **model_kwargs)
    cfg = pred.config
    dev = _device(device) if measure else (None if device is None else as_device("device", device))
    report: dict[str, Any] = dict(cfg)
    report.update(
        predicted=pred.as_dict(), predicted_peak_phase=pred.peak_phase, formulas=pred.formulas,
        device=None, measured_peak_bytes=None, measured_step_peak_bytes=None, measured_held_bytes=None,
        measured_phase_peaks=None, measured_reserved_peak_bytes=None, relative_error=None, step_relative_error=None, step_seconds=None,
        method=None, steady_state=None,
    )
    if not measure:
        return _json_safe(report)
    advice = "Pass measure=False (--no-measure) for the prediction alone."
    guard.check_fits(pred.peak, dev, None, _sizes_text(pred, cfg["head"]), advice, max_share=max_share)
    if dev.type != "cpu":  # the head is built in fp32 on the CPU first, then moved
        sym = pred.symbols
        built_bytes = (sym["R"] + sym["Q"]) * sym["D"] * 4 + 8 * sym["Q"]
        guard.check_fits(built_bytes, "cpu", None,
                         f"building the head on the CPU ({_sizes_text(pred, cfg['head'])})", advice,
                         max_share=max_share)
    # the checked values (1e6 as 1000000), so the head is built with what was predicted
    built = build_head(head, cfg["num_classes"], cfg["embedding_dim"], dtype, **head_kwargs)
    opt_kwargs = {k: cfg[k] for k in ("momentum", "weight_decay")}
    meas = measure_head_step(built, cfg["batch_size"], cfg["optimizer"], dev, max_share=max_share, **opt_kwargs)
    del built
    gc.collect()
    report.update(
        device=meas.device,
        measured_peak_bytes=meas.peak_bytes,
        measured_step_peak_bytes=meas.step_peak_bytes,
        measured_held_bytes=meas.held_bytes,
        measured_phase_peaks=meas.phase_peaks,
        measured_reserved_peak_bytes=meas.reserved_peak_bytes,
        # None, not a division by zero, when a measurement saw nothing
        relative_error=(pred.peak - meas.peak_bytes) / meas.peak_bytes if meas.peak_bytes else None,
        step_relative_error=(pred.step_peak - meas.step_peak_bytes) / max(meas.step_peak_bytes, 1),
        step_seconds=meas.step_seconds,
        method=meas.method,
        steady_state=meas.steady_state,
    )
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """`value` with every nan or inf float replaced by None: JSON has no such numbers
    (json.dumps would write the invalid token NaN), and a ratio that cannot be formed is unknown."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def agreement_table(
    num_classes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000),
    embedding_dim: int = 512,
    batch_size: int = 128,
    head: str = "fc",
    device: str | None = "cpu",
    progress: Callable[[dict], None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Predicted vs measured peak for each N, one `memory_report` per row (run one at a time).

    Every N is checked first, the fit on the device included (`guard.check_fits`): a size that
    cannot be measured stops the table before the first measurement, not after the others."""
    if isinstance(num_classes, (str, bytes)) or not hasattr(num_classes, "__iter__"):
        raise ArgumentError("num_classes", f"must be a sequence of whole numbers >= 2, got {num_classes!r}")
    sizes = [as_int("num_classes", n, 2) for n in num_classes]
    if not sizes:
        raise ArgumentError("num_classes", "must hold at least one number of identities, got an empty sequence")
    if progress is not None and not callable(progress):
        raise ArgumentError("progress", f"must be a callable taking a row dict, or None, got {progress!r}")
    dev = _device(device)
    model_kwargs = {k: v for k, v in kwargs.items() if k in _MODEL_KNOBS or k in ("dtype", "optimizer")}
    for n in sizes:
        pred = predict_memory(n, embedding_dim, batch_size, head=head, **model_kwargs)
        guard.check_fits(pred.peak, dev, None, _sizes_text(pred, pred.config["head"]),
                         "Drop it from num_classes, or use predict_memory for the prediction alone.")
    rows = []
    for n in sizes:
        r = memory_report(head, n, embedding_dim, batch_size, device=dev, **kwargs)
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
    digits = as_int("digits", digits, 0, 12)
    head = (f"{'N':>10} {'predicted ' + unit:>16} {'measured ' + unit:>15} {'error':>8}   "
            f"{'step pred.':>11} {'step meas.':>11} {'error':>8}")
    lines = [head]

    def error(v: float | None) -> str:  # None: a measurement that saw nothing, no ratio
        return f"{v:>+8.1%}" if v is not None else f"{'-':>8}"

    for r in rows:
        lines.append(
            f"{r['num_classes']:>10,} {r['predicted_peak'] / scale:>16,.{digits}f} {r['measured_peak'] / scale:>15,.{digits}f} "
            f"{error(r['error'])}   {r['predicted_step_peak'] / scale:>11,.{digits}f} "
            f"{r['measured_step_peak'] / scale:>11,.{digits}f} {error(r['step_error'])}"
        )
    return "\n".join(lines)



# --------------------------------------------------------------------------- allocation table

#: Ops that only reserve memory for the op around them: the row names the op they serve.
_ALLOCATING_HELPERS = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
                                 "aten::new_empty_strided", "aten::resize_", "aten::to", "aten::_to_copy"})
_NODE_PREFIX = "autograd::engine::evaluate_function: "


@dataclass
class AllocationRow:
    """One tensor allocation of a measured step.

    `nbytes`: its size. `shape` / `dtype`: as seen by the first op that read it (None when no
    op read it), `symbolic`: the shape in N, D, B ('N x D', 'B x N', 'N x 1'; a leading '~' marks
    a shape guessed from the size alone, '?' a buffer no op read: see `symbolic_shape`). `op`: the aten op the step's code (or the autograd
    node) called, `kernel`: the innermost op that asked for the memory, when another.
    `node`: the autograd node in backward ('' elsewhere). `phase`: the measured phase
    (forward, backward, optimizer), `model_phase`: the memory model's (`model.HEAD_PHASES`).
    `alloc_ms` / `freed_ms`: from the step's start; `freed_ms`, `freed_phase`,
    `freed_model_phase` and `freed_in` (the node or op running when it was freed) are None
    for a tensor still alive at the end of the step. `alloc_event` / `free_event`: positions
    in the step's sequence of allocations and frees (`AllocationTable.events`).
    `live_at_peak`: alive at the step's peak.
    """

    index: int
    nbytes: int
    shape: tuple[int, ...] | None
    dtype: str | None
    symbolic: str
    op: str
    kernel: str
    node: str
    phase: str
    model_phase: str
    alloc_ms: float
    alloc_event: int
    freed_ms: float | None = None
    free_event: int | None = None
    freed_phase: str | None = None
    freed_model_phase: str | None = None
    freed_in: str | None = None
    live_at_peak: bool = False

    @property
    def made_by(self) -> str:
        """'NodeBackward0: aten::op (aten::kernel)', the short form the table prints."""
        text = self.op + (f" ({self.kernel})" if self.kernel and self.kernel != self.op else "")
        return f"{self.node}: {text}" if self.node else text


@dataclass
class AllocationTable:
    """The allocations of one steady-state head step on the CPU, in the order they were made.

    `rows`: every allocation of the step (`AllocationRow`), tiny ones included. `events`: the
    step's allocations and frees in order, (ms, signed bytes, running bytes above held, row
    index or None for a tensor made before the step), the same running total as
    `measure_head_step`'s timeline. `step_peak_bytes`: its maximum, `peak_event` where it is
    first reached. `min_bytes`: rows below it print as one aggregated line. `symbols`: N, D, B,
    e (bytes per element of the head's dtype). `print(table)` or `str(table)` gives the table.
    """

    config: dict[str, Any]
    symbols: dict[str, int]
    held_bytes: int
    step_peak_bytes: int
    peak_event: int
    rows: list[AllocationRow]
    events: list[tuple[float, int, int, int | None]] = field(repr=False)
    min_bytes: int = 1024

    def large(self) -> list[AllocationRow]:
        """The rows of at least `min_bytes`."""
        return [r for r in self.rows if r.nbytes >= self.min_bytes]

    def small(self) -> list[AllocationRow]:
        """The rows below `min_bytes`: what the printed table aggregates into one line."""
        return [r for r in self.rows if r.nbytes < self.min_bytes]

    def select(self, symbolic: str | None = None, nbytes: int | None = None, phase: str | None = None,
               model_phase: str | None = None) -> list[AllocationRow]:
        """The rows matching every given field (e.g. symbolic='N x D', model_phase='backward: centres')."""
        return [r for r in self.rows if (symbolic is None or r.symbolic == symbolic)
                and (nbytes is None or r.nbytes == nbytes) and (phase is None or r.phase == phase)
                and (model_phase is None or r.model_phase == model_phase)]

    def live_at(self, event: int) -> list[AllocationRow]:
        """The rows alive just after event number `event` (an index into `events`)."""
        return [r for r in self.rows
                if r.alloc_event <= event and (r.free_event is None or r.free_event > event)]

    def max_alive(self, symbolic: str, dtype: str | None = None) -> int:
        """The largest number of tensors of shape `symbolic` ('N x D') alive at the same time
        (of `dtype` only, when given)."""
        now = best = 0
        for _, size, _, row in self.events:
            if row is None:
                continue
            r = self.rows[row]
            if r.symbolic == symbolic and (dtype is None or r.dtype == dtype):
                now += 1 if size > 0 else -1
                best = max(best, now)
        return best

    def by_shape(self) -> dict[str, dict[str, int]]:
        """Counts of allocations per symbolic shape and model phase, for the rows of at least min_bytes."""
        out: dict[str, dict[str, int]] = {}
        for r in self.large():
            key = r.symbolic + ("" if r.dtype in (None, self.config["dtype"]) else f" {r.dtype}")
            out.setdefault(key, {})
            out[key][r.model_phase] = out[key].get(r.model_phase, 0) + 1
        return out

    def format(self, times: bool = False) -> str:
        """The table as text: one line per allocation of at least `min_bytes` (`#`: its place among
        all the step's allocations), the smaller ones in one line, then what makes up the peak.
        `times`: add the milliseconds from the step's start at which each was made and freed."""
        cfg, s = self.config, self.symbols
        e = s["e"]
        opt = cfg["optimizer"] + (f" (momentum {cfg['momentum']:g})" if cfg["optimizer"] == "sgd" and cfg["momentum"]
                                  else "") + (f", weight decay {cfg['weight_decay']:g}" if cfg["weight_decay"] else "")
        lines = [
            f"Allocations of one steady-state {_HEAD_TITLES.get(cfg['head'], cfg['head'])} step on the CPU "
            f"(torch.profiler): N={s['N']:,}, D={s['D']}, B={s['B']}, {cfg['dtype']}, {opt}",
            f"one N x D = {s['N'] * s['D'] * e:,} bytes, one B x N = {s['B'] * s['N'] * e:,} bytes, "
            f"one B x D = {s['B'] * s['D'] * e:,} bytes; held between steps: {self.held_bytes:,} bytes",
        ]
        rows = self.large()
        shapes = [r.symbolic + ("" if r.dtype in (None, cfg["dtype"]) else f" {r.dtype}") for r in rows]
        freed = [self._freed_text(r) for r in rows]
        widths = [max([len(h)] + [len(v) for v in col]) for h, col in (
            ("shape", shapes), ("phase", [r.model_phase for r in rows]), ("made by", [r.made_by for r in rows]),
            ("freed in", freed))]
        head = (f"{'#':>4} {'bytes':>11}  {'shape':<{widths[0]}}  {'phase':<{widths[1]}}  {'made by':<{widths[2]}}  "
                f"{'freed in':<{widths[3]}}" + ("  made ms  freed ms" if times else "") + "  at peak")
        lines.append(head)
        for r, shape, f in zip(rows, shapes, freed):
            t = ""
            if times:
                t = f"  {r.alloc_ms:>7.2f}  " + (f"{r.freed_ms:>8.2f}" if r.freed_ms is not None else f"{'-':>8}")
            lines.append(f"{r.index:>4} {r.nbytes:>11,}  {shape:<{widths[0]}}  {r.model_phase:<{widths[1]}}  "
                         f"{r.made_by:<{widths[2]}}  {f:<{widths[3]}}{t}  {'*' if r.live_at_peak else ''}".rstrip())
        small = self.small()
        if small:
            total = sum(r.nbytes for r in small)
            at_peak = sum(r.nbytes for r in small if r.live_at_peak)
            alive_end = sum(1 for r in small if r.free_event is None)
            lines.append(f"   + {len(small)} allocations below {self.min_bytes:,} bytes: {total:,} bytes in all, the largest "
                         f"{max(r.nbytes for r in small):,} bytes; {at_peak:,} bytes of them alive at the peak, "
                         f"{alive_end} still alive at the end")
        before = [ev for ev in self.events if ev[3] is None]
        if before:
            freed = -sum(ev[1] for ev in before)
            lines.append(f"   - {len(before)} frees of tensors made before the step: {freed:,} bytes")
        live = self.live_at(self.peak_event)
        parts = " + ".join(f"{n} ({k})" for k, n in _count(live, cfg["dtype"]).items())
        lines.append(f"step peak: {self.step_peak_bytes:,} bytes above held, in {self.peak_phase()}: {parts}")
        return "\n".join(lines)

    def format_events(self, unit_shape: str = "N x D") -> str:
        """The step as a story: every allocation or free of at least `min_bytes`, the running
        total above held (in bytes and in tensors of `unit_shape`), and the large tensors alive
        just after it. This is the measured timeline with names on every step of it."""
        s = self.symbols
        dims = [p.strip() for p in unit_shape.split("x")]
        unit = s["e"]
        for dim in dims:
            unit *= s[dim] if dim in s else int(dim)
        lines = [f"{'event':>5} {'':1} {'shape':<10} {'made by / freed in':<55} {'above held':>12} "
                 f"{'in ' + unit_shape:>9}  large tensors alive after it"]
        for k, (_, size, running, row) in enumerate(self.events):
            if row is None or abs(size) < self.min_bytes:
                continue
            r = self.rows[row]
            what = r.made_by if size > 0 else self._freed_text(r)
            alive = " + ".join(f"{n} ({shape})" for shape, n in
                               _count([x for x in self.live_at(k) if x.nbytes >= self.min_bytes],
                                      self.config["dtype"]).items())
            shape = r.symbolic + ("" if r.dtype in (None, self.config["dtype"]) else f" {r.dtype}")
            lines.append(f"{k:>5} {'+' if size > 0 else '-'} {shape:<10} {what:<55} {running:>12,} "
                         f"{running / unit:>9.3f}  {alive}")
        return "\n".join(lines)

    def peak_phase(self) -> str:
        """The model phase in which the step's peak is reached."""
        row = self.events[self.peak_event][3]
        return self.rows[row].model_phase if row is not None else ""

    def _freed_text(self, r: AllocationRow) -> str:
        if r.free_event is None:
            return "alive at the end"
        if not r.freed_in:
            return f"{r.freed_model_phase} (last reference dropped)"
        if "zero_grad" in r.freed_in:
            return f"{r.freed_model_phase} (zero_grad: it was {self.config.get('grad_name', 'a .grad')})"
        return f"{r.freed_model_phase} ({r.freed_in})"

    def __str__(self) -> str:
        return self.format()

    def show(self, times: bool = False) -> None:
        """Print the table."""
        print(self.format(times))


def _count(rows: Sequence[AllocationRow], dtype: str | None = None) -> dict[str, int]:
    """Rows by symbolic shape (with the dtype when it is not `dtype`), largest first."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for r in rows:
        key = r.symbolic + ("" if r.dtype in (None, dtype) else f" {r.dtype}")
        counts[key] = counts.get(key, 0) + 1
        sizes[key] = max(sizes.get(key, 0), r.nbytes)
    return dict(sorted(counts.items(), key=lambda kv: -sizes[kv[0]]))


_HEAD_TITLES = {"fc": "FC", "partial_fc": "Partial FC", "attfc": "AttFC"}


def symbolic_shape(shape: Sequence[int] | None, symbols: Mapping[str, int], nbytes: int | None = None,
                   itemsize: int | None = None) -> str:
    """A shape written in the symbols N, D, B: (1000, 64) -> 'N x D', (32, 1000) -> 'B x N',
    (1000, 1) -> 'N x 1', () -> 'scalar'. A size matching two symbols shows both ('B|D'); the
    symbols S and Q are used when `symbols` has them.

    Without a shape, `nbytes` is matched against N x D, B x N, B x D or one symbol, times
    `itemsize` (then 1 for bool masks, 4, 8): '~N x D' (the '~' says it is guessed from the
    size). '?' when nothing matches: a buffer no op read, such as a matmul kernel's scratch."""
    names = [k for k in ("N", "D", "B", "S", "Q") if k in symbols]

    def dim(v: int) -> str:
        hits = [k for k in names if symbols[k] == v]
        return "|".join(hits) if hits else str(v)

    if shape is not None:
        return " x ".join(dim(int(v)) for v in shape) if len(shape) else "scalar"
    if nbytes is None:
        return "?"
    sizes = [itemsize] if itemsize else []
    for e in sizes + [1, 4, 8]:
        for a in names:
            for b in names:
                if a != b and symbols[a] * symbols[b] * e == nbytes and (a, b) in (("N", "D"), ("B", "N"), ("B", "D")):
                    return f"~{a} x {b}"
        for a in names:
            if symbols[a] * e == nbytes:
                return f"~{a}"
    return "?"


def allocation_table(
    head: str = "fc",
    num_classes: int = 1000,
    embedding_dim: int = 64,
    batch_size: int = 32,
    dtype: str = "float32",
    optimizer: str = "sgd",
    *,
    min_bytes: int = 1024,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 1,
    seed: int = 0,
    **head_kwargs: Any,
) -> AllocationTable:
    """Every allocation of one steady-state head step on the CPU, with its shape, op and phases.

    The step is `measure_head_step`'s (`head_step` on embeddings [B, D] with requires_grad and
    labels, after `warmup_steps` steps that create the optimizer state), run under torch.profiler
    with profile_memory=True and record_shapes=True. Each allocation becomes an `AllocationRow`:
    its size; its shape and dtype from the first op that read it, written in N, D, B ('N x D',
    'B x N'; also S, the centres Partial FC samples, and Q, AttFC's container size); the aten op
    (and autograd node) that made it; the measured phase (forward, backward, optimizer) and the
    memory model's phase; when and where it was freed. Choose N, D and B distinct so that the
    shapes name themselves (the defaults: 1000, 64, 32).

    `print(allocation_table(...))` prints the rows of at least `min_bytes`, the smaller ones as
    one aggregated line, and which tensors make up the step's peak; `format_events()` tells the
    step allocation by allocation, with what is alive after each. `head_kwargs` go to the head
    (margin, sample_rate, ...). The step runs on the CPU whatever the machine: the profiler's
    records of CPU allocations carry the shapes and the ops. Autograd makes the same tensors on
    CUDA, where the caching allocator rounds each block up (and matmuls may take workspaces).
    """
    from .model import DTYPE_BYTES

    model_kwargs = {k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS}
    pred = predict_memory(num_classes, embedding_dim, batch_size, dtype, optimizer, head, momentum=momentum,
                          weight_decay=weight_decay, **model_kwargs)
    n, d, b = (pred.config[k] for k in ("num_classes", "embedding_dim", "batch_size"))
    optimizer, momentum, weight_decay = (pred.config[k] for k in ("optimizer", "momentum", "weight_decay"))
    min_bytes = as_int("min_bytes", min_bytes, 0)
    warmup_steps = as_int("warmup_steps", warmup_steps, 0)
    seed = as_int("seed", seed, 0)
    lr = as_float("lr", lr, 0, low_open=True)
    # the profiler also keeps a record per allocation, but the tensors dominate
    guard.check_fits(pred.peak, "cpu", None, _sizes_text(pred, pred.config["head"]),
                     "Choose N, D and B small: the table names shapes, the memory model scales them.")
    torch.manual_seed(seed)
    built = build_head(head, n, d, dtype, **head_kwargs)
    kind = _head_kind(built)
    dev = torch.device("cpu")
    embeddings, labels, keys = step_inputs(built, b, dev, seed)
    opt = make_optimizer(list(built.parameters()), optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def run(mark=None, split=None) -> None:
        with _model_phase_hooks(built, kind, split) if kind else contextlib.nullcontext():
            head_step(built, embeddings, labels, opt, mark, keys)

    for _ in range(warmup_steps):
        run()
    gc.collect()
    held = _unique_bytes(_held_tensors(built, opt, embeddings, labels, keys))
    prof = _profile_cpu(run, split=True, record_shapes=True)
    recs = prof.records
    splits = _split_indices([r["t_ns"] for r in recs], prof.splits)
    phases = [r["phase"] for r in recs]
    model_phases = _model_phase_labels(phases, splits, kind) if kind else phases
    e = DTYPE_BYTES[dtype_name(dtype)]
    symbols = dict(N=n, D=d, B=b, e=e)
    extra = dict(S=getattr(built, "num_sample", None),  # Partial FC: centres sampled per step
                 Q=getattr(getattr(built, "container", None), "capacity", None))  # AttFC: container size
    symbols.update({k: int(v) for k, v in extra.items() if v is not None and int(v) not in (n, d, b)})

    rows: list[AllocationRow] = []
    open_rows: dict[Any, int] = {}
    events: list[tuple[float, int, int, int | None]] = []
    running = peak = peak_event = 0
    for i, (rec, model_phase) in enumerate(zip(recs, model_phases)):
        ms = (rec["t_ns"] - prof.t0) / 1e6
        node, op, kernel = _made_by(rec["stack"])
        key = rec["alloc_id"]
        running += rec["size"]
        if rec["size"] > 0:
            shape, sdtype = prof.shapes.get(key, (None, None)) if key is not None else (None, None)
            if shape is not None and sdtype is not None:
                numel = 1
                for v in shape:
                    numel *= int(v)
                if numel * torch.empty((), dtype=sdtype).element_size() != rec["size"]:
                    shape = None  # a view of the storage: not the allocation's own shape
            dname = str(sdtype).replace("torch.", "") if sdtype is not None else None
            rows.append(AllocationRow(
                index=len(rows) + 1, nbytes=rec["size"], shape=shape, dtype=dname,
                symbolic=symbolic_shape(shape, symbols, rec["size"], e), op=op, kernel=kernel, node=node,
                phase=rec["phase"], model_phase=model_phase, alloc_ms=ms, alloc_event=i,
            ))
            if key is not None:
                open_rows[key] = len(rows) - 1
            events.append((ms, rec["size"], running, len(rows) - 1))
        else:
            j = open_rows.pop(key, None) if key is not None else None
            if j is not None:
                r = rows[j]
                r.freed_ms, r.free_event, r.freed_phase, r.freed_model_phase = ms, i, rec["phase"], model_phase
                r.freed_in = node or op or None
            events.append((ms, rec["size"], running, j))
        if running > peak:
            peak, peak_event = running, i
    for r in rows:
        r.live_at_peak = r.alloc_event <= peak_event and (r.free_event is None or r.free_event > peak_event)
    params = [name for name, p in built.named_parameters() if p.requires_grad]
    config = dict(head=kind or type(built).__name__, num_classes=n, embedding_dim=d, batch_size=b,
                  dtype=dtype_name(dtype), optimizer=str(optimizer).lower(), momentum=momentum,
                  weight_decay=weight_decay,
                  grad_name="W.grad" if params == ["weight"] else "a parameter's .grad")
    return AllocationTable(config=config, symbols=symbols, held_bytes=held, step_peak_bytes=peak,
                           peak_event=peak_event, rows=rows, events=events, min_bytes=min_bytes)


def _made_by(stack: Sequence[str]) -> tuple[str, str, str]:
    """(autograd node, op, kernel) of an allocation from the names of the events around it.

    The node is the innermost autograd node; the op the outermost op below it (what the code
    or the node called: aten::index_put, Optimizer.zero_grad#SGD.zero_grad); the kernel the
    innermost op that is not a mere allocation (aten::clone inside aten::index_put)."""
    node, below = "", list(stack)
    for i, name in enumerate(stack):
        if name.startswith(_NODE_PREFIX):
            node, below = name[len(_NODE_PREFIX):], list(stack[i + 1:])
    below = [name for name in below if name != node and not name.startswith(_NODE_PREFIX)]
    if not below:
        return node, "", ""
    op = below[0]
    kernels = [name for name in below if name not in _ALLOCATING_HELPERS]
    kernel = kernels[-1] if kernels else below[-1]
    return node, op, kernel
