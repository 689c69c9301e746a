"""The analytic memory model of one head training step: named byte terms, phases and the peak (lesson 02).

Every term is a formula in bytes (`TERMS`) evaluated from a handful of symbols, and the step
is split into phases (`PHASES`): the predicted peak is what the head holds between steps plus
the largest phase. Symbols: N identities, D embedding_dim, B batch, e bytes per element of the
head's dtype, R rows of W (N; 0 for AttFC), S centres normalised and used in the logits (N for
FC, the sampled ones for Partial FC), C logit columns, g gathered copies of W (1 for Partial
FC), o optimizer state copies of W (not the margin m), t optimizer temporaries, K key embeddings per query, G
GCCs per query (1 for AttFC), P backbone parameters (the key encoder's copy), Q container
size, A key-image activation bytes; over M processes (lesson 10, `world_size`), R is the largest
shard of W and L = M*B the gathered rows in FC's logits (B for AttFC), in `DISTRIBUTED_TERMS`.
The phases differ by head (`HEAD_PHASES`).

Mixed precision (`predict_memory(..., amp_dtype="bfloat16")`, `PRECISIONS`): the step runs
under autocast with fp32 master weights, as practitioners train. W, its gradient and the
optimizer state stay fp32; the matmul casts a half-precision copy of the normalised centres
and returns half-precision cosines; the cross-entropy runs in fp32. These terms are
`MIXED_TERMS` (symbol h: bytes of the half type), phases `MIXED_HEAD_PHASES`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import ArgumentError, as_choice, as_float, as_int


GiB = 2**30
MiB = 2**20

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
OPTIMIZERS = ("sgd", "adam", "adamw")
_HEAD_ALIASES = {"fc": "fc", "full_fc": "fc", "partial_fc": "partial_fc", "pfc": "partial_fc", "attfc": "attfc"}

# The terms over the step's rows that, over several processes, are the M*B gathered rows (L).
_GATHERED_ROWS = ("embedding_temporaries", "logits", "logit_grads", "head_temporaries")

# name: (kind, formula in the symbols above, what it is). The formula string is what is evaluated.
TERMS: dict[str, tuple[str, str, str]] = {
    "class_centres": ("held", "R*D*e", "W, one D-dim class centre per identity"),
    "optimizer_state": ("held", "o*R*D*e", "optimizer state: o copies of W (SGD with momentum o=1, Adam o=2)"),
    "inputs": ("held", "(1 + K)*B*D*e + 8*B",
               "the batch: embeddings from the backbone, int64 labels (and AttFC's K key embeddings per query)"),
    "key_encoder": ("held", "4*P", "AttFC: fp32 copy of the backbone's P parameters (the key encoder)"),
    "container": ("held", "Q*(D*e + 8)", "AttFC: Q class centres in the container and their int64 labels"),
    "centre_grad": ("step", "R*D*e", "one N x D gradient in backward: at the normalize backward's peak the "
                                     "gradient reaching normalize(W) (W.grad is made just after), then W.grad, "
                                     "alive until zero_grad(set_to_none=True)"),
    "gathered_centres": ("step", "g*S*D*e",
                         "Partial FC: the S sampled rows of W (a gather, g=1), later their gradient"),
    "normalized_centres": ("step", "S*D*e + 2*S*e",
                           "F.normalize of the S centres in the logits (saved for backward) and their norms; "
                           "later the gradient of that copy"),
    "embedding_temporaries": ("step", "(1 + G)*B*D*e", "normalised embeddings (and AttFC's G=1 GCC per query)"),
    "logits": ("step", "2*B*C*e", "two B x C buffers kept for backward: cosines before the clamp, then the log-softmax"),
    "logit_grads": ("step", "2*B*C*e", "gradients of the log-softmax and of the logits, alive together in backward"),
    "head_temporaries": ("step", "2*B*C*e", "the margin's clone of the cosines and its index_put copy"),
    "attention_temporaries": ("step", "G*(2 + K)*B*D*e",
                              "AttFC's attention loader: the query, its normalised copy and the K normalised keys"),
    "container_logits": ("step", "B*Q*e + max(B*Q, B*D*e)",
                         "AttFC: the one B x Q buffer (cosines, then logits, then probabilities, in place), with "
                         "first the bool mask of each query's own identity, then the gradient of q"),
    "embedding_backward": ("step", "5*G*B*D*e",
                           "AttFC's backward: the gradient of q formed in the forward, and F.normalize's backward "
                           "on the embeddings (the gradient and three temporaries)"),
    "key_activations": ("step", "A", "AttFC: activations of the K*B key images in the key encoder (a parameter)"),
    "normalize_backward": (
        "step",
        "4*S*D*e",
        "backward of F.normalize(W): four N x D temporaries of the division's backward (W/n, W/n^2, the negated "
        "gradient and their product), next to the gradient reaching normalize(W) (centre_grad)",
    ),
    "optimizer_temporaries": ("step", "t*R*D*e", "copies made inside optimizer.step (Adam t=2, SGD with weight decay t=1)"),
}

# Which step terms are alive together, per head. The order of the phases is the order of the step.
HEAD_PHASES: dict[str, dict[str, tuple[str, ...]]] = {
    "fc": {
        "forward": ("normalized_centres", "embedding_temporaries", "logits", "head_temporaries"),
        "backward: logits": ("normalized_centres", "embedding_temporaries", "logits", "logit_grads"),
        "backward: centres": ("centre_grad", "normalize_backward", "embedding_temporaries"),
        "optimizer": ("centre_grad", "optimizer_temporaries"),
    },
    # Partial FC: the normalize backward runs on the S gathered rows (the gathered copy, the
    # gradient of the normalised one and four temporaries); only then is the gradient
    # scattered into a dense N x D W.grad, while the gathered rows' gradient is still alive.
    "partial_fc": {
        "forward": ("gathered_centres", "normalized_centres", "embedding_temporaries", "logits", "head_temporaries"),
        "backward: logits": ("gathered_centres", "normalized_centres", "embedding_temporaries", "logits",
                             "logit_grads"),
        "backward: centres": ("gathered_centres", "normalized_centres", "normalize_backward", "embedding_temporaries"),
        "backward: scatter": ("centre_grad", "gathered_centres", "embedding_temporaries"),
        "optimizer": ("centre_grad", "optimizer_temporaries"),
    },
    # AttFC: no W. The forward holds the container logits; its backward only hands on the
    # gradient of q, formed in the forward (`attfc.attfc_loss`); nothing to optimise.
    "attfc": {
        "forward: attention": ("attention_temporaries", "key_activations"),
        "forward: container": ("embedding_temporaries", "container_logits"),
        "backward": ("embedding_backward",),
    },
}
PHASES = HEAD_PHASES["fc"]  # the FC step, as lesson 02 derives it

# One rank of M > 1 processes (lesson 10, `distributed`). FC and Partial FC: the logits and the
# normalised embeddings are those of the L = M*B gathered rows against this rank's columns
# (`ShardedFC`), and the gathered embeddings and labels live through forward and backward.
# AttFC: its loss is over its own B queries (L = B); after it, the M*B GCCs and labels are gathered
# for the enqueue. Counted from `distributed.measure_rank_memory` at M = 1 and 2 (within 1 %).
DISTRIBUTED_TERMS: dict[str, tuple[str, str, str]] = {
    **{name: (kind, formula.replace("B*", "L*", 1) if name in _GATHERED_ROWS else formula, what)
       for name, (kind, formula, what) in TERMS.items()},
    "gathered_batch": ("step", "M*B*(D*e + 8)",
                       "the M*B embeddings and labels of every rank, gathered (FC, Partial FC), or AttFC's M*B "
                       "GCCs and labels gathered for the container"),
}
DISTRIBUTED_HEAD_PHASES: dict[str, dict[str, tuple[str, ...]]] = {
    **{head: {phase: names + (("gathered_batch",) if phase != "optimizer" else ()) for phase, names in phases.items()}
       for head, phases in HEAD_PHASES.items() if head != "attfc"},
    "attfc": {**{k: v for k, v in HEAD_PHASES["attfc"].items() if k != "backward"},
              "forward: enqueue": ("embedding_temporaries", "gathered_batch"),
              "backward": HEAD_PHASES["attfc"]["backward"]},
}


# The FC and Partial FC step under torch.autocast (fp32 master weights, h-byte compute), counted
# from the allocations of FullFC / PartialFC under torch.autocast("cpu", dtype=torch.bfloat16)
# (tests/test_memory_mixed.py measures them). F.normalize(W) is not an autocast op, so it runs
# in fp32 on the fp32 W, and so does its backward: at D > B the peak is the same five fp32
# N x D copies as without autocast. Only the matmul's copy and the logits are half precision.
MIXED_TERMS: dict[str, tuple[str, str, str]] = {
    "class_centres": ("held", "R*D*e", "W in fp32: the master weights autocast casts from"),
    "optimizer_state": ("held", "o*R*D*e", "optimizer state in fp32: o copies of W (SGD with momentum o=1, Adam o=2)"),
    "inputs": ("held", "(1 + K)*B*D*e + 8*B", "the batch: fp32 embeddings from the backbone, int64 labels"),
    "centre_grad": ("step", "R*D*e", "W.grad, fp32 like W, alive from backward until zero_grad(set_to_none=True)"),
    "gathered_centres": ("step", "g*S*D*e", "Partial FC: the S sampled rows of W (fp32), later their gradient"),
    "normalized_centres": ("step", "S*D*e",
                           "F.normalize of the S centres, in fp32 (not an autocast op) until the matmul has cast "
                           "it; in backward the fp32 gradient of that copy"),
    "centre_norms": ("step", "2*S*e", "the centres' norms, saved by F.normalize's division"),
    "half_centres": ("step", "S*D*h", "the half-precision copy of the normalised centres the matmul casts and saves"),
    "half_centre_grad": ("step", "S*D*h", "the matmul's gradient of that half copy"),
    "embedding_temporaries": ("step", "B*D*(e + h)", "normalised embeddings (fp32) and their half copy"),
    "cosines": ("step", "B*C*h", "the matmul's half-precision cosines, saved by the clamp; later their gradient"),
    "log_softmax": ("step", "B*C*e", "cross-entropy runs in fp32 under autocast: its fp32 log-softmax, saved"),
    "loss_copies": ("step", "B*C*(h + e)", "the margin's half-precision logits and their fp32 copy for the loss"),
    "logit_grads": ("step", "2*B*C*e", "fp32 gradients of the log-softmax and of the logits, alive together"),
    "normalize_backward": ("step", "4*S*D*e", "backward of F.normalize(W) in fp32: the gradient and three temporaries"),
    "optimizer_temporaries": ("step", "t*R*D*e", "copies made inside optimizer.step (Adam t=2, SGD with weight decay t=1)"),
}
_MIXED_FC_PHASES: dict[str, tuple[str, ...]] = {
    "forward: matmul": ("gathered_centres", "normalized_centres", "centre_norms", "half_centres",
                        "embedding_temporaries", "cosines"),
    "forward: loss": ("gathered_centres", "centre_norms", "half_centres", "embedding_temporaries", "cosines",
                      "log_softmax", "loss_copies"),
    "backward: logits": ("gathered_centres", "centre_norms", "half_centres", "embedding_temporaries", "cosines",
                         "log_softmax", "logit_grads"),
    "backward: matmul": ("gathered_centres", "centre_norms", "half_centres", "half_centre_grad",
                         "embedding_temporaries", "cosines"),
    "backward: cast": ("gathered_centres", "centre_norms", "half_centre_grad", "normalized_centres",
                       "embedding_temporaries"),
    "backward: centres": ("gathered_centres", "centre_norms", "normalized_centres", "normalize_backward",
                          "embedding_temporaries"),
}
MIXED_HEAD_PHASES: dict[str, dict[str, tuple[str, ...]]] = {
    "fc": {**_MIXED_FC_PHASES, "optimizer": ("centre_grad", "optimizer_temporaries")},
    "partial_fc": {**_MIXED_FC_PHASES,
                   "backward: scatter": ("centre_grad", "gathered_centres", "embedding_temporaries"),
                   "optimizer": ("centre_grad", "optimizer_temporaries")},
}

# Measured phases (record_function markers) and the model phases each one covers.
MEASURED_PHASES: dict[str, tuple[str, ...]] = {
    "forward": ("forward", "forward: attention", "forward: container", "forward: matmul", "forward: loss"),
    "backward": ("backward: logits", "backward: centres", "backward: scatter", "backward", "backward: matmul",
                 "backward: cast"),
    "optimizer": ("optimizer",),
}


def _tables(config: dict[str, Any]) -> tuple[dict[str, tuple[str, str, str]], dict[str, tuple[str, ...]]]:
    """(terms, phases) of a configuration: the autocast ones when it has an amp_dtype."""
    if config.get("amp_dtype"):
        return MIXED_TERMS, MIXED_HEAD_PHASES[config["head"]]
    if config.get("world_size", 1) > 1:
        return DISTRIBUTED_TERMS, DISTRIBUTED_HEAD_PHASES[config["head"]]
    return TERMS, HEAD_PHASES[config["head"]]


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
        terms, phases = _tables(self.config)
        names = [n for n, (kind, _, _) in terms.items() if kind == "held"] + list(phases[self.peak_phase])
        return {n: self.terms[n] for n in names if self.terms[n]}

    def describe(self, name: str) -> str:
        """What the term `name` is, from the table this breakdown was computed with."""
        return _tables(self.config)[0][name][2]

    def table(self, unit: str = "MiB", all_terms: bool = False) -> str:
        """A printable table: term, formula, size. Only the terms this head holds or uses in a
        phase, unless `all_terms` (the others belong to other heads and never reach its peak)."""
        scale = _unit_scale(unit)
        terms, phases = _tables(self.config)
        used = {n for n, (kind, _, _) in terms.items() if kind == "held"} | {n for p in phases.values() for n in p}
        rows = [f"{'term':<24}{'formula':<26}{unit:>12}"]
        for name, value in self.terms.items():
            if all_terms or name in used:
                rows.append(f"{name:<24}{self.formulas[name]:<26}{value / scale:>12.2f}")
        for name in ("held", "step_peak", "peak"):
            rows.append(f"{name:<24}{'':<26}{getattr(self, name) / scale:>12.2f}")
        rows.append(f"peak phase: {self.peak_phase}")
        return "\n".join(rows)


_UNIT_SCALES = {"B": 1, "KiB": 2**10, "MiB": MiB, "GiB": GiB, "MB": 1e6, "GB": 1e9}


def _unit_scale(unit: str) -> float:
    return _UNIT_SCALES[as_choice("unit", unit, sorted(_UNIT_SCALES))]


def canonical_head(head: str) -> str:
    """'fc', 'partial_fc' or 'attfc' from a head name or alias."""
    if not isinstance(head, str) or head.lower() not in _HEAD_ALIASES:
        raise ArgumentError("head", f"must be one of {sorted(_HEAD_ALIASES)}, got {head!r}")
    return _HEAD_ALIASES[head.lower()]


def dtype_name(dtype: str | torch.dtype, name: str = "dtype") -> str:
    """'float32' etc. from a string or a torch.dtype; checks it is one the model knows. `name`:
    the argument's name for the error (e.g. 'amp_dtype')."""
    if isinstance(dtype, torch.dtype) or isinstance(dtype, str):
        text = str(dtype).replace("torch.", "")
        if text in DTYPE_BYTES:
            return text
    raise ArgumentError(name, f"must be one of {sorted(DTYPE_BYTES)} (or the torch.dtype), got {dtype!r}")


def check_optimizer(optimizer: str, momentum: float = 0.9, weight_decay: float = 0.0) -> tuple[str, float, float]:
    """(name, momentum, weight_decay) checked: a name of `OPTIMIZERS` (any case), momentum in
    [0, 1) (at 1 or above the update never decays: no training does that), weight decay >= 0."""
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ArgumentError("optimizer", f"must be one of {OPTIMIZERS}, got {optimizer!r}")
    return (optimizer.lower(), as_float("momentum", momentum, 0, 1, high_open=True),
            as_float("weight_decay", weight_decay, 0))


def optimizer_copies(optimizer: str, momentum: float = 0.9, weight_decay: float = 0.0) -> tuple[int, int]:
    """(m, t): copies of W the optimizer keeps between steps, and makes inside `step()`.

    Counted from torch's single-tensor (CPU) implementations: SGD keeps one momentum buffer
    and updates in place, but `grad.add(param, alpha=weight_decay)` is a new tensor; Adam
    keeps two moments and builds `sqrt(v)` and the denominator as new tensors.
    """
    name, momentum, weight_decay = check_optimizer(optimizer, momentum, weight_decay)
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
    amp_dtype: str | torch.dtype | None = None,
    world_size: int = 1,
) -> MemoryBreakdown:
    """The analytic memory model of one training step of a head, in bytes.

    Knobs that only some heads read: `sample_rate` (Partial FC: S = max(ceil(r*N), B)
    centres per step, an upper bound since a batch has at most B identities; W still N x D);
    `container_size` Q (AttFC; default floor(container_ratio * N), the head's own rule),
    `num_keys` K, `backbone_params` P (the key encoder's copy) and `key_activation_bytes` A
    (both zero for the head step alone). `amp_dtype` ('float16' or 'bfloat16'; FC and Partial FC):
    the step under torch.autocast in that type with `dtype='float32'` master weights
    (`MIXED_TERMS`); AttFC's head runs outside autocast (the official code autocasts the
    backbone only), so it takes none. Every head's terms are counted from its autograd
    graph (FullFC, PartialFC) or its fused loss (AttFC), and checked against the
    measurement (tests, `benchmarks/memory_agreement.py`).

    `world_size` P (lesson 10): the step of one rank of P processes, each with a batch of B. FC and
    Partial FC hold R = ceil(N / P) rows of W and compute the logits of all L = P*B gathered
    embeddings against them (`distributed.ShardedFC`); AttFC holds the whole container on every
    rank and gathers P*B GCCs to enqueue (`distributed.gather_container`).
    """
    n = as_int("num_classes", num_classes, 2)
    d = as_int("embedding_dim", embedding_dim, 1)
    b = as_int("batch_size", batch_size, 1)
    kind = canonical_head(head)
    dname = dtype_name(dtype)
    opt, momentum, weight_decay = check_optimizer(optimizer, momentum, weight_decay)
    m, t = optimizer_copies(opt, momentum, weight_decay)
    # Every knob is checked, also those this head does not read: a nan there is a mistake too.
    sample_rate = as_float("sample_rate", sample_rate, 0, 1, low_open=True)
    if container_size is not None:
        container_size = as_int("container_size", container_size, 1)
    if container_ratio is not None or container_size is None:
        container_ratio = as_float("container_ratio", container_ratio, 0, 1, low_open=True)
    num_keys = as_int("num_keys", num_keys, 1)
    backbone_params = as_int("backbone_params", backbone_params, 0)
    key_activation_bytes = as_int("key_activation_bytes", key_activation_bytes, 0)
    amp = None if amp_dtype is None else dtype_name(amp_dtype, "amp_dtype")
    world = as_int("world_size", world_size, 1)
    if amp is not None and world > 1:
        raise ArgumentError("amp_dtype", "is modelled for one process only: pass amp_dtype=None with world_size > 1")
    if amp is not None:
        if DTYPE_BYTES[amp] != 2:
            raise ArgumentError("amp_dtype", f"must be 'float16' or 'bfloat16' (autocast's compute type), got "
                                             f"{amp_dtype!r}")
        if dname != "float32":
            raise ArgumentError("amp_dtype", f"runs autocast over fp32 master weights: pass dtype='float32' (got "
                                             f"dtype={dname!r}); for everything in 16 bits pass dtype={amp!r} and "
                                             f"no amp_dtype")
        if kind not in MIXED_HEAD_PHASES:
            raise ArgumentError("amp_dtype", f"must be None for head={head!r}: it runs outside autocast (the "
                                             f"official AttFC code autocasts only the backbone): pass "
                                             f"amp_dtype=None; predict_training_step puts its backbone and key "
                                             f"encoder in mixed precision")
    e = DTYPE_BYTES[dname]
    rows = math.ceil(n / world)  # the largest shard of W
    symbols = dict(N=n, D=d, B=b, e=e, h=DTYPE_BYTES[amp] if amp else e, o=m, t=t, R=rows, S=rows, C=rows, g=0,
                   K=0, G=0, P=0, Q=0, A=0, L=world * b, M=world)
    knobs: dict[str, Any] = {"world_size": world} if world > 1 else {}
    if kind == "partial_fc":
        # at most B identities in a batch; over M processes a shard receives B of the M*B gathered
        # labels on average (labels spread evenly over the shards), not all of them
        s = min(rows, max(math.ceil(sample_rate * rows), b))
        symbols.update(S=s, C=s, g=1)
        knobs["sample_rate"] = sample_rate
    elif kind == "attfc":
        from ..heads.attfc import container_capacity  # the head's own rule for Q

        q = container_capacity(n, container_ratio, container_size)
        symbols.update(
            R=0,
            S=0,
            C=0,  # no FC logits: the container's are `container_logits`
            L=b,  # each rank's loss is over its own batch (only the GCCs are gathered)
            G=1,
            Q=q,
            K=num_keys,
            P=backbone_params,
            A=key_activation_bytes,
        )
        knobs.update(container_size=q, num_keys=symbols["K"], backbone_params=symbols["P"])
    config = dict(
        head=kind, num_classes=n, embedding_dim=d, batch_size=b, dtype=dname, optimizer=opt,
        momentum=momentum, weight_decay=weight_decay, **knobs,
    )
    if amp is not None:
        config["amp_dtype"] = amp
    table, head_phases = _tables(config)
    namespace = {"__builtins__": {}, "max": max}
    terms = {name: int(eval(formula, namespace, symbols)) for name, (_, formula, _) in table.items()}
    held = sum(terms[name] for name, (kind_, _, _) in table.items() if kind_ == "held")
    phases = {phase: sum(terms[name] for name in names) for phase, names in head_phases.items()}
    peak_phase = max(phases, key=phases.get)
    return MemoryBreakdown(
        config=config,
        symbols=symbols,
        terms=terms,
        formulas={name: formula for name, (_, formula, _) in table.items()},
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
    budget = as_int("budget_bytes", budget_bytes, 1)
    if "num_classes" in config:
        raise ArgumentError("num_classes", "must not be given: predicted_boundary searches it")

    return _largest_fitting(lambda n: predict_memory(n, **config).peak <= budget)


def _largest_fitting(fits, limit: int | None = None) -> int | None:
    """Largest N >= 2 with fits(N), for a fits that turns false once and stays so (0: none fits;
    None: `limit` fits). Doubling, then bisection on fits(lo) and not fits(hi)."""
    if not fits(2):
        return 0
    if limit is not None and fits(limit):
        return None
    lo, hi = 2, 4
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
