"""The analytic memory model of one head training step: named byte terms, phases and the peak.

Every term is a formula in bytes (`TERMS`) evaluated from a handful of symbols, and the step
is split into phases (`PHASES`): the predicted peak is what the head holds between steps plus
the largest phase. Symbols: N identities, D embedding_dim, B batch, e bytes per element of the
head's dtype, R rows of W (N; 0 for AttFC), S centres normalised and used in the logits (N for
FC, the sampled ones for Partial FC), C logit columns, g gathered copies of W (1 for Partial
FC), o optimizer state copies of W (not the margin m), t optimizer temporaries, K key embeddings per query, G
GCCs per query (1 for AttFC), P backbone parameters (the key encoder's copy), Q container
size, A key-image activation bytes. The phases differ by head (`HEAD_PHASES`).

Mixed precision (`predict_memory(..., amp_dtype="bfloat16")`, `PRECISIONS`): the step runs
under autocast with fp32 master weights, as practitioners train. W, its gradient and the
optimizer state stay fp32; the matmul casts a half-precision copy of the normalised centres
and returns half-precision cosines; the cross-entropy runs in fp32. These terms are
`MIXED_TERMS` (symbol h: bytes of the half type), phases `MIXED_HEAD_PHASES`.

The whole training step (`predict_training_step`): the head next to the backbone (its
weights, gradients, optimizer state and activations; `BACKBONES`) and, for AttFC, the key
encoder and its key images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import ArgumentError, as_choice, as_float, as_int
from .guard import format_bytes

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

#: Precisions of a training step. `dtype`: parameters, gradients and optimizer state;
#: `amp_dtype`: the autocast compute type (None: no autocast). "mixed_*" is how models are
#: trained (torch.autocast, fp32 master weights); "pure_*" puts everything, optimizer state
#: included, in 16 bits: a lower bound that is not how face models are trained.
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": dict(dtype="float32", amp_dtype=None, label="fp32"),
    "mixed_fp16": dict(dtype="float32", amp_dtype="float16",
                       label="mixed fp16 (autocast, fp32 master weights)"),
    "mixed_bf16": dict(dtype="float32", amp_dtype="bfloat16",
                       label="mixed bf16 (autocast, fp32 master weights)"),
    "pure_fp16": dict(dtype="float16", amp_dtype=None,
                      label="pure fp16: weights, gradients, optimizer state all fp16 (not how models are trained)"),
    "pure_bf16": dict(dtype="bfloat16", amp_dtype=None,
                      label="pure bf16: weights, gradients, optimizer state all bf16 (not how models are trained)"),
}
#: Older spellings: a dtype name meant "everything in that dtype".
_PRECISION_ALIASES = {"float32": "fp32", "float16": "pure_fp16", "bfloat16": "pure_bf16"}


def precision_config(precision: str) -> dict[str, Any]:
    """`precision`'s entry of `PRECISIONS` with its canonical name under 'precision'.

    Accepts the names of `PRECISIONS` and, for the old dtype menu, 'float32' (= 'fp32'),
    'float16' (= 'pure_fp16') and 'bfloat16' (= 'pure_bf16').
    """
    key = str(precision).lower() if isinstance(precision, str) else None
    key = _PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ArgumentError("precision", f"must be one of {sorted(PRECISIONS)} (or a dtype name: "
                            f"{sorted(_PRECISION_ALIASES)}), got {precision!r}; for autocast with fp32 master "
                            f"weights use 'mixed_fp16' or 'mixed_bf16'")
    return dict(PRECISIONS[key], precision=key)


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
    symbols = dict(N=n, D=d, B=b, e=e, h=DTYPE_BYTES[amp] if amp else e, o=m, t=t, R=n, S=n, C=n, g=0, K=0, G=0,
                   P=0, Q=0, A=0)
    knobs: dict[str, Any] = {}
    if kind == "partial_fc":
        s = min(n, max(math.ceil(sample_rate * n), b))
        symbols.update(S=s, C=s, g=1)
        knobs["sample_rate"] = sample_rate
    elif kind == "attfc":
        from ..attfc import container_capacity  # the head's own rule for Q

        q = container_capacity(n, container_ratio, container_size)
        symbols.update(
            R=0,
            S=0,
            C=0,  # no FC logits: the container's are `container_logits`
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




_OOM_KNOBS = ("momentum", "weight_decay", "sample_rate", "num_keys", "container_ratio", "container_size")
_HEAD_NAMES = {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}


def explain_oom(head: str, num_classes: int, embedding_dim: int = 512, batch_size: int = 128, *,
                dtype: str | torch.dtype = "float32", optimizer: str = "sgd", capacity_bytes: int | None = None,
                top: int = 4, **knobs: Any) -> str:
    """What to tell a training run that ran out of memory: a few lines of text.

    The head's predicted step (`predict_memory`): its peak, the `top` largest terms at the peak
    (with the N x D class centres W spelled out in bytes), and what would fit instead, each with
    its own predicted peak: fewer identities, Partial FC, AttFC, a smaller batch. `knobs`: what
    `train.memory_knobs(config)` returns (momentum, weight_decay, sample_rate, num_keys,
    container_ratio, container_size). `capacity_bytes`: the device's memory, when known: then
    the text gives the largest N whose head step fits it, and says when the head alone fits
    (the backbone is then the likelier cause). The model counts the head alone: the backbone's
    weights, gradients, optimizer state and activations come on top.
    """
    unknown = sorted(set(knobs) - set(_OOM_KNOBS))
    if unknown:
        raise ArgumentError(unknown[0], f"is not a memory knob; explain_oom takes {list(_OOM_KNOBS)}")
    top = as_int("top", top, 1)
    capacity = None if capacity_bytes is None else as_int("capacity_bytes", capacity_bytes, 1)
    settings = dict(embedding_dim=embedding_dim, batch_size=batch_size, dtype=dtype, optimizer=optimizer)
    pred = predict_memory(num_classes, head=head, **settings, **knobs)
    cfg, sym = pred.config, pred.symbols
    kind, n, d, b = cfg["head"], cfg["num_classes"], cfg["embedding_dim"], cfg["batch_size"]
    lines = [f"Out of memory. The {_HEAD_NAMES[kind]} head's step alone is predicted to need "
             f"{format_bytes(pred.peak)} at its peak ({pred.peak_phase}) with N = {n:,} identities, D = {d}, "
             f"B = {b}, {cfg['dtype']}, {cfg['optimizer']}; the backbone comes on top.",
             "Largest terms at the peak:"]
    largest = sorted(pred.peak_terms().items(), key=lambda kv: -kv[1])[:top]
    width = max(len(name) for name, _ in largest)
    for name, value in largest:
        lines.append(f"  {name:<{width}}  {format_bytes(value):>10}  ({value:,} bytes = {pred.formulas[name]})")
    if sym["R"]:
        w_bytes = sym["R"] * d * sym["e"]
        lines.append(f"W, the class centres, is N x D = {n:,} x {d} x {sym['e']} bytes = {w_bytes:,} bytes "
                     f"({format_bytes(w_bytes)}); its gradient and optimizer state are as large.")
    if capacity is not None:
        fits = pred.peak <= capacity
        most = predicted_boundary(capacity, head=kind, **settings, **knobs) if kind != "attfc" or \
            knobs.get("container_size") is None else None
        line = f"The device holds {format_bytes(capacity)}: the head's step alone {'fits' if fits else 'does not fit'}"
        line += f"; at most N = {most:,} identities fit with it." if most is not None else "."
        if fits:
            line += (" The backbone's activations and weights are then the likelier cause: they grow with the "
                     "batch (--batch-size) and halve under mixed precision (--amp, on CUDA).")
        lines.append(line)
    lines.append("Other settings (the head's step alone, predicted):")

    def alt(num_classes: int = n, **change: Any) -> str:
        c = dict(settings, head=kind, **knobs)
        c.update(change)
        if c["head"] != kind:  # another head: only the optimizer's knobs carry over
            c = {k: v for k, v in c.items() if k not in ("sample_rate", "num_keys", "container_ratio",
                                                         "container_size")}
        return format_bytes(predict_memory(num_classes, **c).peak)

    if n >= 4:
        lines.append(f"  - fewer identities (--classes): {alt(num_classes=n // 2)} at N = {n // 2:,}")
    if kind != "partial_fc":
        lines.append(f"  - Partial FC (--head partial_fc, --sample-rate 0.1): {alt(head='partial_fc')}; W, its "
                     f"gradient and optimizer state stay N x D, the logits shrink")
    if kind != "attfc":
        lines.append(f"  - AttFC (--head attfc): {alt(head='attfc')} with its container at 0.3 N (--dcc-ratio) "
                     f"and no W; its key encoder, a copy of the backbone, comes on top")
    else:
        q = sym["Q"]
        lines.append(f"  - a smaller container (--dcc-ratio, --container-size; now Q = {q:,}): "
                     f"{alt(container_size=max(1, q // 2), container_ratio=None)} at Q = {max(1, q // 2):,}")
    if b >= 2:
        lines.append(f"  - a smaller batch (--batch-size): {alt(batch_size=b // 2)} at B = {b // 2}"
                     + ("; for FC heads at D > B the batch matters little, N does" if kind != "attfc" else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the whole step


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone adds to a training step, in bytes (activations per image).

    `activation_bytes`: tensors saved for backward by one image's forward (fp32), kept from the
    forward to the backward; `mixed_activation_bytes`: the same under autocast (half-precision
    activations). `inference_bytes` / `mixed_inference_bytes`: the transient peak of one image's
    forward under no_grad, what AttFC's key encoder needs while it embeds the key images.
    All from `measure_backbone` at `image_size`; `source` says how.
    """

    name: str
    params: int
    activation_bytes: int
    mixed_activation_bytes: int
    inference_bytes: int
    mixed_inference_bytes: int
    image_size: int = 112
    source: str = ""

    def per_image(self, precision: str) -> tuple[int, int]:
        """(activation, inference) bytes per image at `precision` (see `PRECISIONS`).

        Pure 16-bit: half the fp32 figures (every saved tensor in 2 bytes), an estimate; the
        other precisions are measured.
        """
        p = precision_config(precision)
        if p["amp_dtype"]:
            return self.mixed_activation_bytes, self.mixed_inference_bytes
        scale = DTYPE_BYTES[p["dtype"]]
        return self.activation_bytes * scale // 4, self.inference_bytes * scale // 4


_BACKBONE_SOURCE = (
    "measured with attfc_lite.memory.measure_backbone on the CPU (torch 2.14, 2 cores) at 112x112, "
    "train mode, embedding 512: activations = unique storages handed to autograd's saved_tensors_hooks "
    "(parameters and the input excluded), taken as the slope between batches 2 and 4 so that what does "
    "not grow with the batch (autocast's half copies of the weights, BatchNorm statistics) drops out; "
    "inference = slope of the profiler's peak allocation of a no_grad forward (parameters frozen, as "
    "the key encoder's) between batches 8 and 16; mixed = torch.autocast('cpu', dtype=torch.bfloat16), "
    "standing in for CUDA's fp16/bf16 autocast (convolutions, PReLU and linear layers autocast in both; "
    "BatchNorm keeps its input's type)."
)

#: Backbones of face recognition at 112x112 (embedding 512). iResNet-50/100: insightface's
#: `iresnet50` / `iresnet100` layout (3x3 stem at stride 1, IBasicBlock stages [3, 4, 14, 3] /
#: [3, 13, 30, 3], BN-dropout-FC-BN output), rebuilt by `reference_backbone`; their parameter
#: counts, 43.6 M and 65.2 M, are insightface's. resnet50: `backbones.make_backbone('resnet50',
#: 512, 112)`, the torchvision ResNet-50 the library trains on GPUs (51 M of its 75 M parameters
#: are the 2048*7*7 x 512 output layer). Per image, fp32 / mixed: activations 67.4 / 33.8 MiB
#: (iResNet-50), 106.4 / 53.3 MiB (iResNet-100), 75.0 / 37.5 MiB (ResNet-50): 8.4 GiB for a
#: batch of 128 on iResNet-50 in fp32. Key-encoder forward (no_grad) peak: 12.25 / 6.1 MiB per
#: image for both iResNets, four 64 x 112 x 112 maps. What the CPU profiler cannot see (a GPU
#: library's convolution workspace, the CUDA context) comes on top.
BACKBONES: dict[str, BackboneSpec] = {
    "iresnet50": BackboneSpec("iResNet-50", 43_590_848, 70_649_856, 35_400_192, 12_845_056, 6_422_528, 112,
                              _BACKBONE_SOURCE),
    "iresnet100": BackboneSpec("iResNet-100", 65_156_160, 111_593_472, 55_872_000, 12_845_056, 6_422_528, 112,
                               _BACKBONE_SOURCE),
    "resnet50": BackboneSpec("ResNet-50 (torchvision)", 74_886_208, 78_627_840, 39_313_920, 11_239_424, 5_619_712,
                             112, _BACKBONE_SOURCE + " Mixed inference between batches 32 and 64: below that the "
                             "bf16 copy of the 51 M-parameter output layer, not the feature maps, sets the peak."),
}


def reference_backbone(name: str, embedding_dim: int = 512, image_size: int = 112) -> torch.nn.Module:
    """The network behind a `BACKBONES` entry, with random weights, for measuring.

    'iresnet50' / 'iresnet100': insightface's IResNet layout built from the library's
    pre-activation block (`backbones._Block`: BN-conv-BN-PReLU-conv-BN, 1x1 conv + BN shortcut
    when the shape changes), a 3x3 stride-1 stem with 64 channels, stages of 64/128/256/512
    channels each starting at stride 2, and the BN-dropout-FC-BN output block. The others go
    to `backbones.make_backbone`.
    """
    from torch import nn

    from ..backbones import _Block, _ceil_halvings, _EmbeddingHead, make_backbone

    layouts = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
    if name not in layouts:
        return make_backbone(name, embedding_dim, image_size)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
    cin = 64
    for cout, blocks in zip((64, 128, 256, 512), layouts[name]):
        layers += [_Block(cin, cout, 2)] + [_Block(cout, cout, 1) for _ in range(blocks - 1)]
        cin = cout
    layers.append(_EmbeddingHead(512, _ceil_halvings(image_size, 4), embedding_dim, 0.0))
    return nn.Sequential(*layers)


def measure_backbone(backbone: torch.nn.Module, image_size: int, *, amp_dtype: str | torch.dtype | None = None,
                     batch_sizes: tuple[int, int] | None = (2, 4),
                     inference_batch_sizes: tuple[int, int] | None = (8, 16)) -> dict[str, Any]:
    """Measure per-image memory of a backbone's training forward on the CPU.

    Returns 'params'; 'activation_bytes': bytes per image saved for backward (the unique
    storages autograd's `saved_tensors_hooks` receive, parameters and the input images
    excluded), the slope between the two `batch_sizes` (None to skip); 'constant_bytes': what
    the saved tensors hold that does not grow with the batch (under autocast: the half copies of
    the weights); 'inference_bytes': the slope of the peak allocation (torch.profiler records) of a
    no_grad forward with frozen parameters, as AttFC's key encoder runs (None to skip). Under
    `amp_dtype` everything runs in torch.autocast('cpu', dtype=amp_dtype). Train mode throughout
    (BatchNorm on batch statistics), restored afterwards. The inference batches must be large
    enough that feature maps, not one large layer's weight cast (autocast), set the peak: check
    that a third batch size gives the same slope.
    """
    import contextlib

    from .measure import _profile_cpu_step, _running

    if not isinstance(backbone, torch.nn.Module):
        raise ArgumentError("backbone", f"must be a torch.nn.Module, got {type(backbone).__name__}")
    amp = None if amp_dtype is None else getattr(torch, dtype_name(amp_dtype, "amp_dtype"))
    # up to 512 pixels, as TrainConfig: one image's activations grow with its area (70 MB at 112)
    size = as_int("image_size", image_size, 8, 512)

    def two_sizes(name: str, sizes) -> tuple[int, int]:
        # the per-image bytes are a slope between two batch sizes: they must differ
        if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
            raise ArgumentError(name, f"must be two batch sizes (small, large) or None, got {sizes!r}")
        small, large = (as_int(name, v, 2, 4096) for v in sizes)
        if not small < large:
            raise ArgumentError(name, f"must be two batch sizes with the first smaller, got {sizes!r}")
        return small, large

    if batch_sizes is not None:
        batch_sizes = two_sizes("batch_sizes", batch_sizes)
    if inference_batch_sizes is not None:
        inference_batch_sizes = two_sizes("inference_batch_sizes", inference_batch_sizes)
    autocast = (lambda: torch.autocast("cpu", dtype=amp)) if amp is not None else contextlib.nullcontext
    params = list(backbone.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    was_training = backbone.training
    backbone.train()
    gen = torch.Generator().manual_seed(0)

    def saved(b: int) -> int:
        images = torch.rand(b, 3, size, size, generator=gen)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
            out = backbone(images)
        del out
        skip = param_ptrs | {images.untyped_storage().data_ptr()}
        return sum(n for ptr, n in seen.items() if ptr not in skip)

    def inference_peak(b: int) -> int:
        images = torch.rand(b, 3, size, size, generator=gen)

        def run(mark) -> None:
            with torch.no_grad(), autocast(), mark("forward"):
                backbone(images)

        _, sizes, phases = _profile_cpu_step(run)
        return _running(sizes, phases)[1]

    try:
        result: dict[str, Any] = {"params": sum(p.numel() for p in params), "activation_bytes": None,
                                  "constant_bytes": None, "inference_bytes": None}
        if batch_sizes is not None:
            b1, b2 = batch_sizes
            s1, s2 = saved(b1), saved(b2)
            result.update(activation_bytes=round((s2 - s1) / (b2 - b1)),
                          constant_bytes=round(s1 - b1 * (s2 - s1) / (b2 - b1)))
        if inference_batch_sizes is not None:
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(False)  # as the key encoder's: autocast then keeps no weight copies
            try:
                i1, i2 = inference_batch_sizes
                result["inference_bytes"] = round((inference_peak(i2) - inference_peak(i1)) / (i2 - i1))
            finally:
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)
    finally:
        backbone.train(was_training)
    return result


def backbone_spec(name: str, backbone: torch.nn.Module, image_size: int, amp_dtype: str = "bfloat16",
                  **measure_kwargs: Any) -> BackboneSpec:
    """A `BackboneSpec` measured now: `measure_backbone` in fp32 and under autocast(`amp_dtype`)."""
    full = measure_backbone(backbone, image_size, **measure_kwargs)
    mixed = measure_backbone(backbone, image_size, amp_dtype=amp_dtype, **measure_kwargs)
    return BackboneSpec(name, full["params"], full["activation_bytes"], mixed["activation_bytes"],
                        full["inference_bytes"] or 0, mixed["inference_bytes"] or 0, int(image_size),
                        f"measured now by measure_backbone (mixed: autocast {amp_dtype} on the CPU)")


# name: (kind, formula, what it is). Symbols: P backbone parameters, p bytes per parameter (4; 2
# in pure 16-bit), h bytes of the autocast type, a 1 under autocast, X / I activation / inference
# bytes per image, H image size, k 1 for AttFC, K key images per query, m / t the optimizer's
# copies and temporaries (`optimizer_copies`), B the batch.
STEP_TERMS: dict[str, tuple[str, str, str]] = {
    "backbone_weights": ("held", "p*P", "the backbone's weights (fp32 master weights under mixed precision)"),
    "backbone_optimizer_state": ("held", "o*p*P", "the backbone's optimizer state (SGD with momentum o=1, Adam o=2)"),
    "key_encoder_weights": ("held", "k*p*P",
                            "AttFC: the key encoder, a copy of the backbone's weights (no gradient, no optimizer "
                            "state)"),
    "images": ("held", "(1 + k*K)*B*3*H*H*4", "the batch of fp32 images (and AttFC's K key images per query)"),
    "backbone_half_weights": ("step", "a*h*P", "autocast's half-precision copies of the weights, kept from forward "
                                               "to backward"),
    "backbone_activations": ("step", "B*X", "the backbone's activations saved for backward, X bytes per image"),
    "backbone_grads": ("step", "p*P", "the backbone's gradients (fp32 under mixed precision)"),
    "backbone_optimizer_temporaries": ("step", "t*p*P", "optimizer.step's temporaries for the backbone's "
                                                        "parameters (all at once, as CUDA's foreach implementation)"),
    "key_image_activations": ("step", "k*K*B*I", "AttFC: the key encoder's no_grad forward on K*B key images, I "
                                                 "bytes per image, freed as it goes (transient)"),
}
#: The whole step's phases, in order, with the head's terms alive in each ('head: ...' entries).
STEP_PHASES: dict[str, tuple[str, ...]] = {
    "keys": ("key_image_activations",),
    "forward and head step": ("backbone_half_weights", "backbone_activations", "head: largest non-optimizer phase"),
    "backward: backbone": ("backbone_half_weights", "backbone_activations", "backbone_grads", "head: centre_grad"),
    "optimizer": ("backbone_grads", "backbone_optimizer_temporaries", "head: optimizer"),
}
_KEY_ENCODER_TERMS = ("key_encoder_weights", "key_image_activations")


@dataclass(frozen=True)
class TrainingStepBreakdown:
    """Predicted bytes of one whole training step: head, backbone and (AttFC) key encoder.

    `head`: the head's own `MemoryBreakdown`; `terms`: the backbone-side `STEP_TERMS`; `held`:
    everything alive between steps (head and backbone); `phases`: bytes above `held` in each of
    `STEP_PHASES`; `peak = held + step_peak`. `phase_terms[phase]`: the bytes of every term
    alive in that phase (held terms included), head terms under their own names.
    """

    config: dict[str, Any]
    head: MemoryBreakdown
    backbone: BackboneSpec | None
    symbols: dict[str, int]
    terms: dict[str, int]
    held: int
    phases: dict[str, int]
    phase_terms: dict[str, dict[str, int]]
    step_peak: int
    peak: int
    peak_phase: str

    def peak_terms(self) -> dict[str, int]:
        """The non-zero terms alive at the peak; they sum to `peak`."""
        return {n: v for n, v in self.phase_terms[self.peak_phase].items() if v}

    def parts(self) -> dict[str, int]:
        """`peak` split into 'head', 'backbone' and 'key encoder' (AttFC's; 0 otherwise)."""
        out = {"head": 0, "backbone": 0, "key encoder": 0}
        for name, value in self.peak_terms().items():
            part = "key encoder" if name in _KEY_ENCODER_TERMS else "backbone" if name in STEP_TERMS else "head"
            out[part] += value
        return out

    def describe(self, name: str) -> str:
        """What the term `name` is (a backbone-side term or one of the head's)."""
        return STEP_TERMS[name][2] if name in STEP_TERMS else self.head.describe(name)


def predict_training_step(
    num_classes: int,
    embedding_dim: int = 512,
    batch_size: int = 128,
    precision: str = "fp32",
    optimizer: str = "sgd",
    head: str = "fc",
    backbone: str | BackboneSpec | None = "iresnet50",
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    sample_rate: float = 0.1,
    container_size: int | None = None,
    container_ratio: float = 0.3,
    num_keys: int = 2,
) -> TrainingStepBreakdown:
    """The memory of one whole training step: the head (`predict_memory`) next to the backbone.

    `backbone`: a name in `BACKBONES`, a `BackboneSpec` (e.g. from `backbone_spec`) or None (the
    head alone). `precision`: a name of `PRECISIONS`. Under mixed precision the backbone runs in
    autocast (half activations, fp32 weights, gradients and optimizer state), and so do the FC and
    Partial FC heads (`MIXED_TERMS`); AttFC's head stays fp32, as in the official code. The same
    optimizer (`optimizer_copies`) trains the head and the backbone.

    The phases: AttFC's key encoder embeds the K*B key images (no_grad: its activations are
    transient); the backbone's forward then the head's whole step up to its optimizer, with every
    saved activation of the backbone alive (the head's backward runs before the backbone's);
    the backbone's backward, bounded above by all activations plus all gradients (in truth the
    activations are freed as the gradients appear); the optimizer.
    """
    pc = precision_config(precision)
    kind = canonical_head(head)
    b = as_int("batch_size", batch_size, 1)
    if backbone is None:
        spec = None
    elif isinstance(backbone, BackboneSpec):
        spec = backbone
    elif isinstance(backbone, str) and backbone in BACKBONES:
        spec = BACKBONES[backbone]
    else:
        raise ArgumentError("backbone", f"must be one of {sorted(BACKBONES)}, a BackboneSpec or None (the head "
                                        f"alone), got {backbone!r}")
    amp = pc["amp_dtype"]
    head_amp = amp if kind in MIXED_HEAD_PHASES else None
    head_pred = predict_memory(
        num_classes, embedding_dim, batch_size, pc["dtype"], optimizer, kind, momentum=momentum,
        weight_decay=weight_decay, sample_rate=sample_rate, container_size=container_size,
        container_ratio=container_ratio, num_keys=num_keys, amp_dtype=head_amp,
    )
    m, t = optimizer_copies(optimizer, momentum, weight_decay)
    x, i = spec.per_image(pc["precision"]) if spec is not None else (0, 0)
    attfc = kind == "attfc" and spec is not None
    symbols = dict(
        P=spec.params if spec else 0, p=DTYPE_BYTES[pc["dtype"]], h=DTYPE_BYTES[amp] if amp else 0, a=1 if amp else 0,
        X=x, I=i, H=spec.image_size if spec else 0, k=1 if attfc else 0, K=head_pred.symbols["K"], o=m, t=t, B=b,
    )
    namespace = {"__builtins__": {}}
    terms = {name: int(eval(formula, namespace, symbols)) for name, (_, formula, _) in STEP_TERMS.items()}
    head_terms, head_phases = _tables(head_pred.config)
    held_terms = {n: head_pred.terms[n] for n, (k, _, _) in head_terms.items() if k == "held"}
    held_terms.update({n: terms[n] for n, (k, _, _) in STEP_TERMS.items() if k == "held"})
    non_opt = {p: v for p, v in head_pred.phases.items() if p != "optimizer"}
    head_main = max(non_opt, key=non_opt.get)

    def head_part(entry: str) -> dict[str, int]:
        if entry == "head: largest non-optimizer phase":
            return {n: head_pred.terms[n] for n in head_phases[head_main]}
        if entry == "head: centre_grad":
            return {"centre_grad": head_pred.terms.get("centre_grad", 0)}
        if entry == "head: optimizer":
            return {n: head_pred.terms[n] for n in head_phases.get("optimizer", ())}
        raise KeyError(entry)

    phase_terms: dict[str, dict[str, int]] = {}
    phases: dict[str, int] = {}
    for phase, entries in STEP_PHASES.items():
        if phase == "keys" and not attfc:
            continue
        alive: dict[str, int] = {}
        for entry in entries:
            alive.update(head_part(entry) if entry.startswith("head: ") else {entry: terms[entry]})
        phases[phase] = sum(alive.values())
        phase_terms[phase] = {**held_terms, **alive}
    held = sum(held_terms.values())
    peak_phase = max(phases, key=phases.get)
    config = dict(head_pred.config, precision=pc["precision"], backbone=spec.name if spec else None,
                  head_step_phase=head_main)
    return TrainingStepBreakdown(
        config=config, head=head_pred, backbone=spec, symbols=symbols, terms=terms, held=held, phases=phases,
        phase_terms=phase_terms, step_peak=phases[peak_phase], peak=held + phases[peak_phase], peak_phase=peak_phase,
    )


def training_step_boundary(budget_bytes: int, limit: int = 10**10, **config: Any) -> int | None:
    """Largest number of identities whose whole step (`predict_training_step`) fits `budget_bytes`.

    0 if none fits; None if even `limit` identities fit (AttFC with a fixed container: its memory
    does not grow with N). `config`: `predict_training_step`'s arguments but num_classes.
    """
    budget = as_int("budget_bytes", budget_bytes, 1)
    limit = as_int("limit", limit, 2)
    if "num_classes" in config:
        raise ArgumentError("num_classes", "must not be given: training_step_boundary searches it")

    return _largest_fitting(lambda n: predict_training_step(n, **config).peak <= budget, limit)
