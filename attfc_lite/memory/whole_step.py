"""The whole training step (`predict_training_step`): the head next to the backbone (its weights,
gradients, optimizer state and activations; `BACKBONES`) and, for AttFC, the key encoder and its
key images; and the largest N whose whole step fits a budget (lesson 09)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import ArgumentError, as_int
from .catalog import BACKBONES, BackboneSpec, precision_config
from .head_model import (DTYPE_BYTES, MIXED_HEAD_PHASES, MemoryBreakdown, _largest_fitting, _tables, canonical_head,
                         optimizer_copies, predict_memory)


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
