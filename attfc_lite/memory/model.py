"""The analytic memory model of one head training step: named byte terms, phases and the peak.

Every term is a formula in bytes (`TERMS`) evaluated from a handful of symbols, and the step
is split into phases (`PHASES`): the predicted peak is what the head holds between steps plus
the largest phase. Symbols: N identities, D embedding_dim, B batch, e bytes per element of the
head's dtype, R rows of W (N; 0 for AttFC), S centres normalised and used in the logits (N for
FC, the sampled ones for Partial FC), C logit columns, g gathered copies of W (1 for Partial
FC), m optimizer state copies of W, t optimizer temporaries, K key embeddings per query, G
GCCs per query (1 for AttFC), P backbone parameters (the key encoder's copy), Q container
size, A key-image activation bytes. The phases differ by head (`HEAD_PHASES`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

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
    "inputs": ("held", "(1 + K)*B*D*e + 8*B",
               "the batch: embeddings from the backbone, int64 labels (and AttFC's K key embeddings per query)"),
    "key_encoder": ("held", "4*P", "AttFC: fp32 copy of the backbone's P parameters (the key encoder)"),
    "container": ("held", "Q*(D*e + 8)", "AttFC: Q class centres in the container and their int64 labels"),
    "centre_grad": ("step", "R*D*e", "W.grad, alive from backward until zero_grad(set_to_none=True)"),
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
        "backward of F.normalize(W): the gradient of the normalised copy and three temporaries of the division",
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

# Measured phases (record_function markers) and the model phases each one covers.
MEASURED_PHASES: dict[str, tuple[str, ...]] = {
    "forward": ("forward", "forward: attention", "forward: container"),
    "backward": ("backward: logits", "backward: centres", "backward: scatter", "backward"),
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
        phases = HEAD_PHASES[self.config["head"]]
        names = [n for n, (kind, _, _) in TERMS.items() if kind == "held"] + list(phases[self.peak_phase])
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
) -> MemoryBreakdown:
    """The analytic memory model of one training step of a head, in bytes.

    Knobs that only some heads read: `sample_rate` (Partial FC: S = max(ceil(r*N), B)
    centres per step, an upper bound since a batch has at most B identities; W still N x D);
    `container_size` Q (AttFC; default floor(container_ratio * N), the head's own rule),
    `num_keys` K, `backbone_params` P (the key encoder's copy) and `key_activation_bytes` A
    (both zero for the head step alone). Every head's terms are counted from its autograd
    graph (FullFC, PartialFC) or its fused loss (AttFC), and checked against the
    measurement (tests, `benchmarks/memory_agreement.py`).
    """
    n = _positive_int("num_classes", num_classes, 2)
    d = _positive_int("embedding_dim", embedding_dim)
    b = _positive_int("batch_size", batch_size)
    kind = canonical_head(head)
    dname = dtype_name(dtype)
    m, t = optimizer_copies(optimizer, momentum, weight_decay)
    symbols = dict(N=n, D=d, B=b, e=DTYPE_BYTES[dname], m=m, t=t, R=n, S=n, C=n, g=0, K=0, G=0, P=0, Q=0, A=0)
    knobs: dict[str, Any] = {}
    if kind == "partial_fc":
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        s = min(n, max(math.ceil(sample_rate * n), b))
        symbols.update(S=s, C=s, g=1)
        knobs["sample_rate"] = float(sample_rate)
    elif kind == "attfc":
        from ..attfc import container_capacity  # the head's own rule for Q

        q = container_capacity(n, container_ratio, container_size)
        symbols.update(
            R=0,
            S=0,
            C=0,  # no FC logits: the container's are `container_logits`
            G=1,
            Q=q,
            K=_positive_int("num_keys", num_keys),
            P=_positive_int("backbone_params", backbone_params, 0),
            A=_positive_int("key_activation_bytes", key_activation_bytes, 0),
        )
        knobs.update(container_size=q, num_keys=symbols["K"], backbone_params=symbols["P"])
    namespace = {"__builtins__": {}, "max": max}
    terms = {name: int(eval(formula, namespace, symbols)) for name, (_, formula, _) in TERMS.items()}
    held = sum(terms[name] for name, (kind_, _, _) in TERMS.items() if kind_ == "held")
    phases = {phase: sum(terms[name] for name in names) for phase, names in HEAD_PHASES[kind].items()}
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


