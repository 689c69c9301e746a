"""Every allocation of one head step on the CPU, named: its size, its shape in N, D, B, the op and
autograd node that made it, the measured and model phase, when it was freed (`allocation_table`) (lesson 02)."""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..checks import as_float, as_int
from . import guard
from .counting import _held_tensors, _unique_bytes
from .head_measure import _MODEL_KNOBS, _head_kind, _sizes_text, build_head, head_step, make_optimizer, step_inputs
from .head_model import dtype_name, predict_memory
from .measure_cpu import _profile_cpu, _split_indices
from .model_phases import _model_phase_hooks, _model_phase_labels


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
    from .head_model import DTYPE_BYTES

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
