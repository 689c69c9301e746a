"""Memory of one training step of a classification head: predicted, measured, and the real limit.

Three views of the same step (fixed input embeddings [B, D] with requires_grad, as if from
a backbone, and labels; head forward, `loss.backward()`, `optimizer.step()`,
`optimizer.zero_grad(set_to_none=True)`):

- `predict_memory`: an analytic model. Every term is a named formula in bytes (`TERMS`),
  evaluated from a handful of symbols, and the step is split into phases (`PHASES`): the
  predicted peak is what the head holds between steps plus the largest phase.
- `measure_head_step`: a real measurement of a steady-state step (momentum buffers already
  exist). On CUDA from the caching allocator (peak allocated, and a timeline from its
  allocation history); on the CPU from the allocation records of `torch.profiler`.
- `find_oom_boundary`: the step run in a child process under a memory cap (address-space
  limit on the CPU, per-process memory fraction on CUDA), searching the largest number of
  identities that fits and the first that fails.

Symbols of the formulas: N identities, D embedding_dim, B batch, e bytes per element of the
head's dtype, R rows of W (N; 0 for AttFC), S centres normalised and used in the logits (N for
FC, the sampled ones for Partial FC), C logit columns, g gathered copies of W (1 for Partial
FC), m optimizer state copies of W, t optimizer temporaries, K key images per query, P
backbone parameters (the key encoder's copy), Q container size, M fp32 B x Q mask buffers,
A key-image activation bytes.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .heads import Head, make_head

GiB = 2**30
MiB = 2**20

#: Identities of the public face datasets the course compares against.
DATASETS: dict[str, int] = {
    "MS1MV3": 93_431,
    "WebFace4M": 205_990,
    "WebFace12M": 617_970,
    "WebFace42M": 2_059_906,
}

#: Memory of common single GPUs. Cards sold as "24/40/80 GB" carry 24/40/80 GiB.
DEVICE_CAPACITIES_GIB: dict[str, float] = {"24 GB": 24.0, "40 GB": 40.0, "80 GB": 80.0}

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
OPTIMIZERS = ("sgd", "adam", "adamw")
_HEAD_ALIASES = {"fc": "fc", "full_fc": "fc", "partial_fc": "partial_fc", "pfc": "partial_fc", "attfc": "attfc"}

# name: (kind, formula in the symbols above, what it is). The formula string is what is evaluated.
TERMS: dict[str, tuple[str, str, str]] = {
    "class_centres": ("held", "R*D*e", "W, one D-dim class centre per identity"),
    "optimizer_state": ("held", "m*R*D*e", "optimizer state: m copies of W (SGD momentum m=1, Adam m=2)"),
    "inputs": ("held", "B*D*e + 8*B", "the batch: embeddings from the backbone and int64 labels"),
    "key_encoder": ("held", "4*P", "AttFC: fp32 copy of the backbone's P parameters (the key encoder)"),
    "container": ("held", "Q*(4*D + 8)", "AttFC: Q fp32 class centres in the container and their int64 labels"),
    "centre_grad": ("step", "R*D*e", "W.grad, alive from backward until zero_grad(set_to_none=True)"),
    "normalized_centres": (
        "step",
        "(1 + g)*S*D*e + 2*S*e",
        "F.normalize(W): a full copy of the S centres in the logits (saved for backward) and their norms; "
        "Partial FC also gathers g=1 copy",
    ),
    "embedding_temporaries": ("step", "(1 + K)*B*D*e", "normalised embeddings (and AttFC's K*B key embeddings)"),
    "logits": ("step", "2*B*C*e", "two B x C buffers kept for backward: cosines before the clamp, then the log-softmax"),
    "logit_grads": ("step", "2*B*C*e", "gradients of the log-softmax and of the logits, alive together in backward"),
    "head_temporaries": (
        "step",
        "2*B*C*e + M*B*Q*4 + B*Q",
        "the margin's clone of the cosines and its index_put copy; AttFC's B x Q mask temporaries",
    ),
    "key_activations": ("step", "A", "AttFC: activations of the K*B key images in the key encoder (a parameter)"),
    "normalize_backward": (
        "step",
        "4*S*D*e",
        "backward of F.normalize(W): the gradient of the normalised copy and three temporaries of the division",
    ),
    "optimizer_temporaries": ("step", "t*R*D*e", "copies made inside optimizer.step (Adam t=2, SGD with weight decay t=1)"),
}

# Which step terms are alive together. The order of the phases is the order of the step.
PHASES: dict[str, tuple[str, ...]] = {
    "forward": ("normalized_centres", "embedding_temporaries", "logits", "head_temporaries", "key_activations"),
    "backward: logits": ("normalized_centres", "embedding_temporaries", "logits", "logit_grads"),
    "backward: centres": ("centre_grad", "normalize_backward", "embedding_temporaries"),
    "optimizer": ("centre_grad", "optimizer_temporaries"),
}

# Measured phases (record_function markers) and the model phases each one covers.
MEASURED_PHASES: dict[str, tuple[str, ...]] = {
    "forward": ("forward",),
    "backward": ("backward: logits", "backward: centres"),
    "optimizer": ("optimizer",),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted bytes of one head configuration.

    `held`: what exists between steps (the held terms). `step_peak`: the largest phase total
    above that. `peak = held + step_peak`: the predicted absolute peak of one steady-state
    step, comparable with a measurement's `peak_bytes`.
    """

    config: dict[str, Any]
    symbols: dict[str, int]
    terms: dict[str, int]
    formulas: dict[str, str]
    held: int
    phases: dict[str, int]
    step_peak: int
    peak: int
    peak_phase: str

    def as_dict(self) -> dict[str, int]:
        """Named byte counts: every term, then `held`, `step_peak` and `peak`."""
        out = dict(self.terms)
        out.update(held=self.held, step_peak=self.step_peak, peak=self.peak)
        return out

    def peak_terms(self) -> dict[str, int]:
        """The terms that make up `peak`: the held ones and those of the peak phase (non-zero)."""
        names = [n for n, (kind, _, _) in TERMS.items() if kind == "held"] + list(PHASES[self.peak_phase])
        return {n: self.terms[n] for n in names if self.terms[n]}

    def table(self, unit: str = "MiB") -> str:
        """A printable table: term, formula, size."""
        scale = _unit_scale(unit)
        rows = [f"{'term':<24}{'formula':<26}{unit:>12}"]
        for name, value in self.terms.items():
            rows.append(f"{name:<24}{self.formulas[name]:<26}{value / scale:>12.2f}")
        for name in ("held", "step_peak", "peak"):
            rows.append(f"{name:<24}{'':<26}{getattr(self, name) / scale:>12.2f}")
        rows.append(f"peak phase: {self.peak_phase}")
        return "\n".join(rows)


def _unit_scale(unit: str) -> float:
    scales = {"B": 1, "KiB": 2**10, "MiB": MiB, "GiB": GiB, "MB": 1e6, "GB": 1e9}
    if unit not in scales:
        raise ValueError(f"unit must be one of {sorted(scales)}, got {unit!r}")
    return scales[unit]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def canonical_head(head: str) -> str:
    """'fc', 'partial_fc' or 'attfc' from a head name or alias."""
    key = str(head).lower()
    if key not in _HEAD_ALIASES:
        raise ValueError(f"head must be one of {sorted(_HEAD_ALIASES)}, got {head!r}")
    return _HEAD_ALIASES[key]


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float32' etc. from a string or a torch.dtype; checks it is one the model knows."""
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    return name


def optimizer_copies(optimizer: str, momentum: float = 0.9, weight_decay: float = 0.0) -> tuple[int, int]:
    """(m, t): copies of W the optimizer keeps between steps, and makes inside `step()`.

    Counted from torch's single-tensor (CPU) implementations: SGD keeps one momentum buffer
    and updates in place, but `grad.add(param, alpha=weight_decay)` is a new tensor; Adam
    keeps two moments and builds `sqrt(v)` and the denominator as new tensors.
    """
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    decay = 1 if weight_decay > 0 else 0
    if name == "sgd":
        return (1 if momentum > 0 else 0), decay
    if name == "adam":
        return 2, 2 + decay
    return 2, 2  # adamw decays the parameter in place


def predict_memory(
    num_classes: int,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str | torch.dtype = "float32",
    optimizer: str = "sgd",
    head: str = "fc",
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    sample_rate: float = 0.1,
    container_size: int | None = None,
    container_ratio: float = 0.3,
    num_keys: int = 2,
    backbone_params: int = 0,
    key_activation_bytes: int = 0,
    mask_buffers: int = 2,
) -> MemoryBreakdown:
    """The analytic memory model of one training step of a head, in bytes.

    Knobs that only some heads read: `sample_rate` (Partial FC: S = max(ceil(r*N), B)
    centres per step, W still N x D); `container_size` Q (AttFC; default
    floor(container_ratio*N/B)*B, at least B), `num_keys` K, `backbone_params` P (the key
    encoder's copy), `key_activation_bytes` A and `mask_buffers` M (fp32 B x Q temporaries of
    the mask). The FC terms are counted from `attfc_lite.heads.FullFC`'s autograd graph; the
    Partial FC and AttFC terms are forecasts that the lessons building them measure.
    """
    n = _positive_int("num_classes", num_classes, 2)
    d = _positive_int("embedding_dim", embedding_dim)
    b = _positive_int("batch_size", batch_size)
    kind = canonical_head(head)
    dname = dtype_name(dtype)
    m, t = optimizer_copies(optimizer, momentum, weight_decay)
    symbols = dict(N=n, D=d, B=b, e=DTYPE_BYTES[dname], m=m, t=t, R=n, S=n, C=n, g=0, K=0, P=0, Q=0, M=0, A=0)
    knobs: dict[str, Any] = {}
    if kind == "partial_fc":
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        s = min(n, max(math.ceil(sample_rate * n), b))
        symbols.update(S=s, C=s, g=1)
        knobs["sample_rate"] = float(sample_rate)
    elif kind == "attfc":
        if container_size is None:
            if not 0 < container_ratio <= 1:
                raise ValueError(f"container_ratio must be in (0, 1], got {container_ratio}")
            q = max(b, (int(container_ratio * n) // b) * b)
        else:
            q = _positive_int("container_size", container_size)
        symbols.update(
            R=0,
            S=0,
            C=1 + q,
            Q=q,
            K=_positive_int("num_keys", num_keys),
            P=_positive_int("backbone_params", backbone_params, 0),
            M=_positive_int("mask_buffers", mask_buffers, 0),
            A=_positive_int("key_activation_bytes", key_activation_bytes, 0),
        )
        knobs.update(container_size=q, num_keys=symbols["K"], backbone_params=symbols["P"])
    terms = {name: int(eval(formula, {"__builtins__": {}}, symbols)) for name, (_, formula, _) in TERMS.items()}
    held = sum(terms[name] for name, (kind_, _, _) in TERMS.items() if kind_ == "held")
    phases = {phase: sum(terms[name] for name in names) for phase, names in PHASES.items()}
    peak_phase = max(phases, key=phases.get)
    config = dict(
        head=kind, num_classes=n, embedding_dim=d, batch_size=b, dtype=dname, optimizer=str(optimizer).lower(),
        momentum=float(momentum), weight_decay=float(weight_decay), **knobs,
    )
    return MemoryBreakdown(
        config=config,
        symbols=symbols,
        terms=terms,
        formulas={name: formula for name, (_, formula, _) in TERMS.items()},
        held=held,
        phases=phases,
        step_peak=phases[peak_phase],
        peak=held + phases[peak_phase],
        peak_phase=peak_phase,
    )


def predicted_boundary(budget_bytes: int, **config: Any) -> int:
    """Largest number of identities whose predicted `peak` fits in `budget_bytes` (0 if none).

    `config` is passed to `predict_memory` (everything but num_classes).
    """
    budget = _positive_int("budget_bytes", budget_bytes)
    if "num_classes" in config:
        raise ValueError("predicted_boundary searches num_classes: do not pass it")

    def fits(n: int) -> bool:
        return predict_memory(n, **config).peak <= budget

    if not fits(2):
        return 0
    lo, hi = 2, 4
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # peak grows with N: bisect on fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


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


def head_step(
    head: Head,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    mark: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> float:
    """One training step of the head alone; `mark(phase)` wraps forward, backward and optimizer.

    Gradients are set to None afterwards (PyTorch's default), so W.grad exists only inside
    the step. Returns the loss.
    """
    mark = mark or (lambda name: contextlib.nullcontext())
    with mark("forward"):
        loss = head(embeddings, labels)
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


def _held_tensors(head: Head, optimizer, embeddings: torch.Tensor, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    yield from head.held_tensors().values()
    for p in head.parameters():
        yield p.grad
    if optimizer is not None:
        for state in optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield embeddings
    yield labels
    yield embeddings.grad


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
    from .utils import default_device

    if not isinstance(head, Head):
        raise TypeError(f"head must be an attfc_lite.heads.Head, got {type(head).__name__}")
    b = _positive_int("batch_size", batch_size)
    warmup_steps = _positive_int("warmup_steps", warmup_steps, 0)
    dev = default_device(device)
    head = head.to(dev)
    params = list(head.parameters())
    dtype = params[0].dtype if params else torch.float32
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(b, head.embedding_dim, generator=gen).to(device=dev, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, head.num_classes, (b,), generator=gen).to(dev)
    opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def run(mark=None) -> None:
        head_step(head, embeddings, labels, opt, mark)

    for _ in range(warmup_steps):
        run()
    step_seconds = None
    if time_step:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        step_seconds = time.perf_counter() - start
    gc.collect()
    held = _unique_bytes(_held_tensors(head, opt, embeddings, labels))
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
                "key_activation_bytes", "mask_buffers", "momentum", "weight_decay")
_MODEL_ONLY = ("container_ratio", "backbone_params", "key_activation_bytes", "mask_buffers", "momentum",
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


# --------------------------------------------------------------------------- out of memory


@dataclass
class OOMBoundary:
    """Where one head step stops fitting under a memory budget, measured and predicted.

    `largest_fit`/`first_fail`: from real steps in a capped child process (None when the
    search did not reach one). `predicted_boundary`: largest N whose predicted `peak` is
    within the budget. `trials`: every attempt in order.
    """

    budget_bytes: int
    device: str
    cap: str
    largest_fit: int | None
    first_fail: int | None
    predicted_boundary: int
    trials: list[dict[str, Any]]
    config: dict[str, Any]
    seconds: float
    child_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ratio(self) -> float | None:
        """predicted boundary / measured boundary (midpoint of largest fit and first fail)."""
        if self.largest_fit is None or self.first_fail is None:
            return None
        return self.predicted_boundary / ((self.largest_fit + self.first_fail) / 2)


_CHILD_TAG = "ATTFC_OOM "
_OOM_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory", "allocation failed")


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(_CHILD_TAG + json.dumps(event) + "\n")
    sys.stdout.flush()


def _vm_size() -> int:
    """Address space of this process (VmSize), the quantity RLIMIT_AS caps."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")  # pragma: no cover


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return any(msg in str(exc).lower() for msg in _OOM_MESSAGES)


def _oom_child() -> None:
    """Entry point of the capped child: reads a pickled spec on stdin, reports JSON lines."""
    spec = pickle.loads(sys.stdin.buffer.read())
    device = torch.device(spec["device"])
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    factory = spec["factory"]
    steps = spec["steps"]

    def attempt(n: int) -> None:
        # Every tensor lives in this frame, so a failure frees them all once the exception is gone.
        if isinstance(factory, str):
            head = build_head(factory, n, spec["embedding_dim"], spec["dtype"], **spec["head_kwargs"])
        else:
            head = factory(n)
        head = head.to(device)
        measure_dtype = next(iter(head.parameters())).dtype if list(head.parameters()) else torch.float32
        emb = torch.randn(spec["batch_size"], head.embedding_dim, device=device, dtype=measure_dtype)
        emb.requires_grad_(True)
        labels = torch.randint(0, n, (spec["batch_size"],), device=device)
        opt = make_optimizer(list(head.parameters()), spec["optimizer"], **spec["optimizer_kwargs"])
        for _ in range(steps):
            head_step(head, emb, labels, opt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def cleanup() -> None:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # Warm up outside the cap: threads, allocator arenas and kernels are set up once, so the
    # cap measures only what the step itself needs.
    attempt(spec["warmup_classes"])
    cleanup()
    budget = spec["budget_bytes"]
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        base = torch.cuda.memory_reserved(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + budget) / total), device)
        cap = f"torch.cuda.set_per_process_memory_fraction: {base} bytes reserved + budget, of {total}"
    else:
        import resource

        base = _vm_size()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = base + budget if hard == resource.RLIM_INFINITY else min(hard, base + budget)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        cap = "RLIMIT_AS: address space after warm-up + budget"
    _emit({"event": "ready", "baseline_bytes": base, "cap": cap})

    def in_use() -> int:
        return torch.cuda.memory_reserved(device) if device.type == "cuda" else _vm_size()

    def trial(n: int) -> bool:
        _emit({"event": "trying", "num_classes": n})
        # What earlier trials left behind eats into this one's budget: report it.
        left_over = in_use() - base
        start = time.perf_counter()
        error = None
        try:
            attempt(n)
            fits = True
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc):
                raise
            fits, error = False, str(exc).strip().splitlines()[0][:160]
        cleanup()
        _emit({"event": "trial", "num_classes": n, "fits": fits, "error": error, "left_over_bytes": left_over,
               "seconds": round(time.perf_counter() - start, 3)})
        return fits

    fit, fail = None, None
    n, growth, rtol = spec["start"], spec["growth"], spec["rtol"]
    max_classes = spec["max_classes"]
    for _ in range(spec["max_trials"]):
        if fail is None:  # climb the ladder until a failure
            if max_classes is not None and n > max_classes:
                break
            if trial(n):
                fit, n = n, max(n + 1, int(math.ceil(n * growth)))
            else:
                fail = n
        elif fit is None:  # even the start failed: go down
            n = int(fail / growth)
            if n < 2:
                break
            if trial(n):
                fit = n
            else:
                fail = n
        else:
            if fail - fit <= max(1, int(rtol * fit)):
                break
            mid = (fit + fail) // 2
            if trial(mid):
                fit = mid
            else:
                fail = mid
    _emit({"event": "done", "largest_fit": fit, "first_fail": fail})


def find_oom_boundary(
    budget_bytes: int,
    head: str | Callable[[int], Head] = "fc",
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    *,
    start: int = 4096,
    growth: float = 2.0,
    rtol: float = 0.05,
    max_classes: int | None = None,
    max_trials: int = 12,
    steps: int = 2,
    warmup_classes: int = 1000,
    timeout_s: float = 300.0,
    model_head: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    **head_kwargs: Any,
) -> OOMBoundary:
    """Find the largest N whose head step fits in `budget_bytes`, by really running out of memory.

    The steps run in a child process (`python -c`), so a failed allocation, or a crash, can
    never take this process down. On the CPU the child caps its address space with
    RLIMIT_AS at (its size after a warm-up step) + budget; on CUDA it sets its memory
    fraction to (reserved after warm-up + budget) / device memory. N climbs a geometric
    ladder from `start` (x `growth`) until a step fails, then bisects to `rtol`. Each trial
    runs `steps` steps (two: the second one holds the optimizer state, the steady state).

    `head` is a head name for `make_head` (with `head_kwargs`) or a picklable factory
    `num_classes -> Head` (e.g. `functools.partial(FullFC, 512)`); then `model_head` and
    `model_kwargs` tell the memory model what to predict.
    """
    budget = _positive_int("budget_bytes", budget_bytes)
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cpu" and not sys.platform.startswith("linux"):
        raise ValueError("the CPU memory cap needs Linux (RLIMIT_AS and /proc); run it on Linux or on CUDA")
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    if isinstance(head, str):
        model_name = canonical_head(head) if model_head is None else model_head
    elif callable(head):
        model_name = model_head or "fc"
        try:
            pickle.dumps(head)
        except Exception as exc:
            raise TypeError(
                "head factory must be picklable to reach the child process: use a module-level function or "
                "functools.partial of a head class, not a lambda"
            ) from exc
    else:
        raise TypeError(f"head must be a head name or a factory num_classes -> Head, got {type(head).__name__}")
    mkw = dict(model_kwargs or {})
    mkw.update({k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS})
    okw = dict(optimizer_kwargs or {})
    for k in ("momentum", "weight_decay"):
        if k in mkw:
            okw.setdefault(k, mkw[k])
    predicted = predicted_boundary(
        budget, embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer,
        head=model_name, **mkw,
    )
    spec = dict(
        factory=head, head_kwargs=head_kwargs, embedding_dim=embedding_dim, batch_size=batch_size,
        dtype=dtype_name(dtype), optimizer=optimizer, optimizer_kwargs=okw, device=str(dev), budget_bytes=budget,
        start=_positive_int("start", start, 2), growth=float(growth), rtol=float(rtol), max_classes=max_classes,
        max_trials=_positive_int("max_trials", max_trials), steps=_positive_int("steps", steps),
        warmup_classes=_positive_int("warmup_classes", warmup_classes, 2),
    )
    env = dict(os.environ)
    # The cap counts address space, so memory that is reserved but unused must not pile up
    # across trials: a fixed glibc mmap threshold unmaps every large block on free; one malloc
    # arena stops glibc from reserving a fresh 64 MiB arena after a failed allocation; and
    # MKL releases its matmul buffers after each call instead of caching them.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_ARENA_MAX", "1")
    env.setdefault("MKL_DISABLE_FAST_MM", "1")
    code = "from attfc_lite.memory import _oom_child; _oom_child()"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    lines: queue.Queue = queue.Queue()

    def reader() -> None:
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    proc.stdin.write(pickle.dumps(spec))
    proc.stdin.close()
    trials: list[dict[str, Any]] = []
    other: list[str] = []
    cap, trying, done = "", None, None
    deadline = started + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.perf_counter()))
        except queue.Empty:
            proc.kill()
            other.append(f"timed out after {timeout_s} s")
            break
        if line is None:
            break
        if not line.startswith(_CHILD_TAG):
            other.append(line.rstrip())
            continue
        event = json.loads(line[len(_CHILD_TAG):])
        if event["event"] == "ready":
            cap = event["cap"]
        elif event["event"] == "trying":
            trying = event["num_classes"]
        elif event["event"] == "trial":
            trying = None
            trials.append({k: event[k] for k in ("num_classes", "fits", "error", "left_over_bytes", "seconds")})
        elif event["event"] == "done":
            done = event
    rc = proc.wait()
    child_error = None
    if done is None:
        # The child died or hung: a trial in flight counts as a failure, and the reason is kept.
        tail = " | ".join(other[-3:])
        child_error = f"child ended without finishing (exit status {rc}): {tail}"
        if trying is not None:
            trials.append({"num_classes": trying, "fits": False, "error": child_error, "left_over_bytes": None,
                           "seconds": None})
    fits = [t["num_classes"] for t in trials if t["fits"]]
    fails = [t["num_classes"] for t in trials if not t["fits"]]
    largest_fit = max(fits) if fits else None
    above = [n for n in fails if largest_fit is None or n > largest_fit]
    first_fail = min(above) if above else None
    config = dict(
        head=head if isinstance(head, str) else getattr(head, "__name__", repr(head)), model_head=model_name,
        embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype_name(dtype), optimizer=optimizer,
        steps=steps, **mkw,
    )
    return OOMBoundary(
        budget_bytes=budget, device=str(dev), cap=cap, largest_fit=largest_fit, first_fail=first_fail,
        predicted_boundary=predicted, trials=trials, config=config,
        seconds=time.perf_counter() - started, child_error=child_error,
    )


# --------------------------------------------------------------------------- plots

_TERM_COLOURS = {
    "class_centres": "#1f77b4",
    "optimizer_state": "#aec7e8",
    "inputs": "#c7c7c7",
    "key_encoder": "#8c564b",
    "container": "#c49c94",
    "centre_grad": "#ff7f0e",
    "normalized_centres": "#2ca02c",
    "embedding_temporaries": "#dbdb8d",
    "logits": "#d62728",
    "logit_grads": "#ff9896",
    "head_temporaries": "#9467bd",
    "key_activations": "#e377c2",
    "normalize_backward": "#98df8a",
    "optimizer_temporaries": "#bcbd22",
}
_PHASE_COLOURS = {"forward": "#1f77b4", "backward": "#d62728", "optimizer": "#2ca02c"}


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    return ax


def plot_memory_vs_classes(
    num_classes: Sequence[int] | None = None,
    embedding_dim: int = 512,
    batch_size: int = 128,
    dtype: str = "float32",
    optimizer: str = "sgd",
    heads: Mapping[str, Mapping[str, Any]] | None = None,
    measured: Mapping[int, int] | None = None,
    datasets: Mapping[str, int] | None = DATASETS,
    capacities_gib: Mapping[str, float] | None = DEVICE_CAPACITIES_GIB,
    show_terms: bool = True,
    ax=None,
):
    """Predicted memory against N on log axes, datasets as vertical lines, devices as horizontal ones.

    `heads`: label -> predict_memory kwargs (default: FC only). For the first head the
    curves of W alone and of W + optimizer state are drawn too (`show_terms`). `measured`:
    N -> measured peak bytes, drawn as points.
    """
    import numpy as np

    ax = _axes(ax)
    ns = np.unique(np.geomspace(1e3, 1e7, 61).astype(int)) if num_classes is None else np.asarray(num_classes)
    heads = heads or {"FC": {"head": "fc"}}
    base = dict(embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer)
    for i, (label, kwargs) in enumerate(heads.items()):
        preds = [predict_memory(int(n), **{**base, **kwargs}) for n in ns]
        ax.plot(ns, [p.peak / GiB for p in preds], lw=2, label=f"{label}: peak of one step")
        if i == 0 and show_terms:
            ax.plot(ns, [p.terms["class_centres"] / GiB for p in preds], ls=":", color="0.3", label=f"{label}: W alone")
            ax.plot(ns, [(p.terms["class_centres"] + p.terms["optimizer_state"]) / GiB for p in preds], ls="--",
                    color="0.3", label=f"{label}: W + optimizer state")
    if measured:
        xs = sorted(measured)
        ax.plot(xs, [measured[n] / GiB for n in xs], "ko", ms=6, label="measured peak")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    for name, n in (datasets or {}).items():
        ax.axvline(n, color="0.6", lw=0.8, ls="-.")
        ax.text(n, hi, f" {name}", rotation=90, va="top", ha="right", fontsize=8, color="0.35")
    for name, gib in (capacities_gib or {}).items():
        ax.axhline(gib, color="firebrick", lw=0.9, alpha=0.7)
        ax.text(ns[0], gib, f"{name} ", va="bottom", fontsize=8, color="firebrick")
    ax.set_ylim(lo, max(hi, 1.3 * max((capacities_gib or {"": 1}).values())))
    ax.set_xlabel("identities N")
    ax.set_ylabel("memory (GiB)")
    ax.set_title(f"FC head memory: D={embedding_dim}, B={batch_size}, {dtype_name(dtype)}, {optimizer}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def plot_breakdown(
    breakdowns: Mapping[str, MemoryBreakdown],
    unit: str = "GiB",
    capacity_gib: float | None = None,
    ax=None,
):
    """Stacked bars, one per head, of the terms that make up each predicted peak."""
    ax = _axes(ax)
    scale = _unit_scale(unit)
    labels = list(breakdowns)
    used: list[str] = []
    for bd in breakdowns.values():
        used += [n for n in bd.peak_terms() if n not in used]
    for name in used:
        bottoms = []
        for i, bd in enumerate(breakdowns.values()):
            terms = bd.peak_terms()
            before = sum(v for k, v in terms.items() if used.index(k) < used.index(name))
            bottoms.append(before / scale)
        heights = [bd.peak_terms().get(name, 0) / scale for bd in breakdowns.values()]
        ax.bar(labels, heights, bottom=bottoms, color=_TERM_COLOURS.get(name), label=name, edgecolor="white", lw=0.5)
    for i, bd in enumerate(breakdowns.values()):
        ax.text(i, bd.peak / scale, f"{bd.peak / scale:,.1f}", ha="center", va="bottom", fontsize=8)
    if capacity_gib is not None:
        ax.axhline(capacity_gib * GiB / scale, color="firebrick", lw=1, ls="--", label=f"device {capacity_gib:g} GiB")
    top = max([bd.peak / scale for bd in breakdowns.values()] + [capacity_gib * GiB / scale if capacity_gib else 0])
    ax.set_ylim(0, 1.08 * top)  # room for the labels above the bars
    ax.set_ylabel(f"predicted peak ({unit})")
    handles, names = ax.get_legend_handles_labels()  # top of the stack first, as drawn
    ax.legend(handles[::-1], names[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_timeline(
    measurement: StepMeasurement,
    prediction: MemoryBreakdown | None = None,
    unit: str = "MiB",
    ax=None,
):
    """Bytes above the held tensors through one step, coloured by phase; the prediction as lines."""
    ax = _axes(ax)
    scale = _unit_scale(unit)
    t = [0.0] + list(measurement.timeline_ms)
    y = [0.0] + [v / scale for v in measurement.timeline_bytes]
    ph = [measurement.timeline_phase[0] if measurement.timeline_phase else ""] + list(measurement.timeline_phase)
    ax.step(t, y, where="post", color="black", lw=1.2, label="measured")
    spans: list[tuple[str, float, float]] = []
    for i, p in enumerate(ph):
        if spans and spans[-1][0] == p:
            spans[-1] = (p, spans[-1][1], t[i])
        else:
            spans.append((p, t[i], t[i]))
    end = t[-1]
    for k, (p, a, b) in enumerate(spans):
        b = spans[k + 1][1] if k + 1 < len(spans) else end
        if p:
            ax.axvspan(a, b, color=_PHASE_COLOURS.get(p, "0.8"), alpha=0.12, lw=0)
            ax.text((a + b) / 2, 0, p, ha="center", va="bottom", fontsize=8, color=_PHASE_COLOURS.get(p, "0.3"))
    if prediction is not None:
        ax.axhline(prediction.step_peak / scale, color="firebrick", ls="--", lw=1,
                   label=f"predicted step peak ({prediction.peak_phase})")
        levels: list[tuple[float, list[str]]] = []  # phases with (nearly) equal totals share one line
        for phase, value in prediction.phases.items():
            if phase == prediction.peak_phase or value <= 0.05 * prediction.step_peak:
                continue
            near = [lv for lv in levels if abs(lv[0] - value) <= 0.02 * prediction.step_peak]
            if near:
                near[0][1].append(phase)
            else:
                levels.append((value, [phase]))
        for value, names in levels:
            ax.axhline(value / scale, color="0.5", ls=":", lw=0.8)
            ax.text(end, value / scale, " predicted " + ", ".join(names), va="center", fontsize=7, color="0.4")
    ax.set_xlabel("time in the step (ms)")
    ax.set_ylabel(f"allocated above held ({unit})")
    cfg = measurement.config
    ax.set_title(f"one step of {cfg['head']}: N={cfg['num_classes']:,}, D={cfg['embedding_dim']}, B={cfg['batch_size']}")
    ax.legend(fontsize=8, loc="upper left")
    return ax
