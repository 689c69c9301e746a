"""A real out-of-memory: the head step in a capped child process, and the largest N that fits (lesson 02)."""
from __future__ import annotations

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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

from ..checks import ArgumentError, as_device, as_float, as_int
from ..heads import Head
from . import guard
from .guard import _vm_size
from .measure import _MODEL_KNOBS, build_head, head_step, make_optimizer, step_inputs
from .model import canonical_head, check_optimizer, dtype_name, predict_memory, predicted_boundary

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


_UNIT_BYTES = {"bytes": 1, "b": 1, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def requested_bytes(message: str) -> int | None:
    """The size of the allocation that failed, read from an out-of-memory message: the CPU
    allocator's 'you tried to allocate 31457280 bytes' or CUDA's 'Tried to allocate 30.00 MiB'
    (rounded to two decimals there). None when the message gives none."""
    import re

    found = re.search(r"tried to allocate\s+([0-9][0-9.,]*)\s*(bytes|b|kib|mib|gib|tib)\b", str(message), re.I)
    if not found:
        return None
    return int(round(float(found.group(1).replace(",", "")) * _UNIT_BYTES[found.group(2).lower()]))


def oom_record(exc: BaseException) -> dict[str, Any]:
    """What an out-of-memory error says, whole: 'error' (the full message, never cut, so the
    allocator's own words stay in it) and 'requested_bytes' (the failed allocation's size, or None)."""
    text = str(exc).strip() or type(exc).__name__
    return {"error": text, "requested_bytes": requested_bytes(text)}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error: MemoryError, torch's OutOfMemoryError (CUDA) or an
    allocator's message (the CPU allocator raises a plain RuntimeError)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return any(msg in str(exc).lower() for msg in _OOM_MESSAGES)


def _apply_cap(device: torch.device, budget: int) -> tuple[int, str]:
    """Cap this process at what it uses now + `budget`: RLIMIT_AS on the CPU, the memory fraction
    on CUDA. Returns (what it used when capped, how it was capped)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        base = torch.cuda.memory_reserved(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + budget) / total), device)
        return base, f"torch.cuda.set_per_process_memory_fraction: {base} bytes reserved + budget, of {total}"
    import resource

    base = _vm_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base + budget if hard == resource.RLIM_INFINITY else min(hard, base + budget)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return base, "RLIMIT_AS: address space after warm-up + budget"


def _lift_cap(device: torch.device) -> None:
    """Undo `_apply_cap` (the soft limit goes back to the hard one; the whole device again)."""
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The cap counts address space, so memory that is reserved but unused must not pile up
    # across trials: a fixed glibc mmap threshold unmaps every large block on free; one malloc
    # arena stops glibc from reserving a fresh 64 MiB arena after a failed allocation; and
    # MKL releases its matmul buffers after each call instead of caching them.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_ARENA_MAX", "1")
    env.setdefault("MKL_DISABLE_FAST_MM", "1")
    return env


def _run_child(code: str, spec: dict, timeout_s: float, on_event: Callable[[dict], None]) -> tuple[int, list[str]]:
    """Run `python -c code` with the pickled `spec` on stdin; hand each JSON event it reports to
    `on_event`. Returns (exit status, its other output lines); a child past `timeout_s` is killed."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_child_env())
    lines: queue.Queue = queue.Queue()

    def reader() -> None:
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    proc.stdin.write(pickle.dumps(spec))
    proc.stdin.close()
    other: list[str] = []
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
        if line.startswith(_CHILD_TAG):
            on_event(json.loads(line[len(_CHILD_TAG):]))
        else:
            other.append(line.rstrip())
    return proc.wait(), other


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
        if spec.get("whole_step") is not None:  # the whole model's step (memory.step.WholeStep)
            spec["whole_step"](n, device, steps)
            return
        if isinstance(factory, str):
            head = build_head(factory, n, spec["embedding_dim"], spec["dtype"], **spec["head_kwargs"])
        else:
            head = factory(n)
        head = head.to(device)
        emb, labels, keys = step_inputs(head, spec["batch_size"], device)
        opt = make_optimizer(list(head.parameters()), spec["optimizer"], **spec["optimizer_kwargs"])
        for _ in range(steps):
            head_step(head, emb, labels, opt, keys=keys)
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
    base, cap = _apply_cap(device, spec["budget_bytes"])
    _emit({"event": "ready", "baseline_bytes": base, "cap": cap})

    def in_use() -> int:
        return torch.cuda.memory_reserved(device) if device.type == "cuda" else _vm_size()

    def trial(n: int) -> bool:
        _emit({"event": "trying", "num_classes": n})
        # What earlier trials left behind eats into this one's budget: report it.
        left_over = in_use() - base
        start = time.perf_counter()
        failure = {"error": None, "requested_bytes": None}
        try:
            attempt(n)
            fits = True
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            fits, failure = False, oom_record(exc)
        cleanup()
        _emit({"event": "trial", "num_classes": n, "fits": fits, **failure, "left_over_bytes": left_over,
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
    whole_step: Callable[[int, torch.device, int], None] | None = None,
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

    `whole_step`: a picklable `(num_classes, device, steps) -> None` that runs whole training
    steps (backbone included; `memory.step.WholeStep`) instead of the head's step; the
    prediction is then the head's alone (the backbone's share is not in the model).
    """
    budget = as_int("budget_bytes", budget_bytes, 1)
    dev = torch.device(as_device("device", device))
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError("device", f"must be 'cpu' or 'cuda[:N]' (the search runs on one device), got {device!r}")
    if dev.type == "cpu" and not sys.platform.startswith("linux"):
        raise ValueError("the CPU memory cap needs Linux (RLIMIT_AS and /proc); run it on Linux or on CUDA")
    embedding_dim = as_int("embedding_dim", embedding_dim, 1)
    batch_size = as_int("batch_size", batch_size, 1)
    dname = dtype_name(dtype)
    start = as_int("start", start, 2)
    growth = as_float("growth", growth, 1, low_open=True)
    rtol = as_float("rtol", rtol, 0, 1, low_open=True)
    max_classes = None if max_classes is None else as_int("max_classes", max_classes, 2)
    max_trials = as_int("max_trials", max_trials, 1)
    steps = as_int("steps", steps, 1)
    warmup_classes = as_int("warmup_classes", warmup_classes, 2)
    timeout_s = as_float("timeout_s", timeout_s, 0, low_open=True)
    if isinstance(head, str):
        model_name = canonical_head(head) if model_head is None else canonical_head(model_head)
    elif callable(head):
        model_name = "fc" if model_head is None else canonical_head(model_head)
        try:
            pickle.dumps(head)
        except Exception as exc:
            raise TypeError(
                "head factory must be picklable to reach the child process: use a module-level function or "
                "functools.partial of a head class, not a lambda"
            ) from exc
    else:
        raise TypeError(f"head must be a head name or a factory num_classes -> Head, got {type(head).__name__}")
    if whole_step is not None:
        try:
            pickle.dumps(whole_step)
        except Exception as exc:
            raise TypeError("whole_step must be picklable to reach the child process (memory.step.WholeStep is)") from exc
    mkw = dict(model_kwargs or {})
    mkw.update({k: v for k, v in head_kwargs.items() if k in _MODEL_KNOBS})
    okw = dict(optimizer_kwargs or {})
    for k in ("momentum", "weight_decay"):
        if k in mkw:
            okw.setdefault(k, mkw[k])
    optimizer = check_optimizer(optimizer, okw.get("momentum", 0.9), okw.get("weight_decay", 0.0))[0]
    if "lr" in okw:
        okw["lr"] = as_float("lr", okw["lr"], 0, low_open=True)
    predicted = predicted_boundary(
        budget, embedding_dim=embedding_dim, batch_size=batch_size, dtype=dname, optimizer=optimizer,
        head=model_name, **mkw,
    )
    # The cap holds each trial within the budget, but the warm-up runs before it: both must fit
    # in what the machine has free. On the CPU a budget past it would let RLIMIT_AS allow more
    # than the machine holds, and the search would end in swapping or the OOM killer.
    warm = predict_memory(warmup_classes, embedding_dim, batch_size, dname, optimizer, model_name, **mkw).peak
    guard.check_fits(max(budget, warm), dev, "budget_bytes",
                     f"a search under a cap of {guard.format_bytes(budget)} (warm-up at N = {warmup_classes:,}: "
                     f"{guard.format_bytes(warm)})",
                     "Choose a smaller budget; predicted_boundary(budget_bytes, ...) gives the model's answer "
                     "without running anything.")
    spec = dict(
        factory=head, head_kwargs=head_kwargs, embedding_dim=embedding_dim, batch_size=batch_size,
        dtype=dname, optimizer=optimizer, optimizer_kwargs=okw, device=str(dev), budget_bytes=budget,
        start=start, growth=growth, rtol=rtol, max_classes=max_classes,
        max_trials=max_trials, steps=steps, warmup_classes=warmup_classes, whole_step=whole_step,
    )
    trials: list[dict[str, Any]] = []
    state: dict[str, Any] = {"cap": "", "trying": None, "done": None}

    def on_event(event: dict) -> None:
        if event["event"] == "ready":
            state["cap"] = event["cap"]
        elif event["event"] == "trying":
            state["trying"] = event["num_classes"]
        elif event["event"] == "trial":
            state["trying"] = None
            trials.append({k: event[k] for k in ("num_classes", "fits", "error", "requested_bytes", "left_over_bytes",
                                                 "seconds")})
        elif event["event"] == "done":
            state["done"] = event

    started = time.perf_counter()
    rc, other = _run_child("from attfc_lite.memory.oom import _oom_child; _oom_child()", spec, timeout_s, on_event)
    cap, trying, done = state["cap"], state["trying"], state["done"]
    child_error = None
    if done is None:
        # The child died or hung: a trial in flight counts as a failure, and the reason is kept.
        tail = " | ".join(other[-3:])
        child_error = f"child ended without finishing (exit status {rc}): {tail}"
        if trying is not None:
            trials.append({"num_classes": trying, "fits": False, "error": child_error, "requested_bytes": None,
                           "left_over_bytes": None, "seconds": None})
    fits = [t["num_classes"] for t in trials if t["fits"]]
    fails = [t["num_classes"] for t in trials if not t["fits"]]
    largest_fit = max(fits) if fits else None
    above = [n for n in fails if largest_fit is None or n > largest_fit]
    first_fail = min(above) if above else None
    config = dict(
        head=head if isinstance(head, str) else getattr(head, "__name__", repr(head)), model_head=model_name,
        whole_step=repr(whole_step) if whole_step is not None else None,
        embedding_dim=embedding_dim, batch_size=batch_size, dtype=dname, optimizer=optimizer,
        steps=steps, **mkw,
    )
    return OOMBoundary(
        budget_bytes=budget, device=str(dev), cap=cap, largest_fit=largest_fit, first_fail=first_fail,
        predicted_boundary=predicted, trials=trials, config=config,
        seconds=time.perf_counter() - started, child_error=child_error,
    )
