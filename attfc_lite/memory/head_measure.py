"""One head training step and its measurement: the head built for it, its inputs and optimizer,
the step itself (`head_step`), and `measure_head_step` (CUDA allocator or CPU profiler) (lesson 02)."""
from __future__ import annotations

import contextlib
import gc
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..checks import as_bool, as_device, as_float, as_int
from ..heads import Head, make_head
from . import guard
from .counting import _held_tensors, _running, _unique_bytes, timed
from .head_model import check_optimizer, dtype_name, predict_memory
from .measure_cpu import _profile_cpu_step
from .measure_cuda import _trace_cuda_step
from .model_phases import _model_phase_hooks, _model_phase_labels


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
