"""Memory of one training step of a classification head: predicted, measured, and the real limit (lessons 02, 03, 05, 09).

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

Before anything is measured, the predicted peak is compared with the memory the device has
available (`guard`): a size that cannot fit is refused with the numbers, and `measure=False`
gives the prediction alone. `explain_oom` turns the model into advice for a training run that
ran out of memory.

The package, by concern: `model` (the formulas, `explain_oom`), `guard` (what fits the
machine), `measure` (the measurement and `memory_report`), `oom` (the real out-of-memory) and
`plots`.
"""
from __future__ import annotations

from .measure import (
    StepMeasurement,
    agreement_table,
    build_head,
    format_agreement,
    head_step,
    make_optimizer,
    measure_head_step,
    memory_report,
)
from .model import (
    BACKBONES,
    DATASETS,
    DEVICE_CAPACITIES_GIB,
    DTYPE_BYTES,
    MEASURED_PHASES,
    MIXED_HEAD_PHASES,
    MIXED_TERMS,
    OPTIMIZERS,
    PHASES,
    PRECISIONS,
    STEP_PHASES,
    STEP_TERMS,
    TERMS,
    BackboneSpec,
    GiB,
    MemoryBreakdown,
    MiB,
    TrainingStepBreakdown,
    backbone_spec,
    canonical_head,
    dtype_name,
    explain_oom,
    measure_backbone,
    optimizer_copies,
    precision_config,
    predict_memory,
    predict_training_step,
    predicted_boundary,
    reference_backbone,
    training_step_boundary,
)
from .guard import SAFE_SHARE, available_bytes, format_bytes
from .oom import OOMBoundary, _oom_child, find_oom_boundary
from .plots import _TERM_COLOURS, plot_breakdown, plot_memory_vs_classes, plot_timeline
from .measure import AllocationRow, AllocationTable, allocation_table, symbolic_shape

__all__ = [
    "DATASETS", "DEVICE_CAPACITIES_GIB", "DTYPE_BYTES", "GiB", "MEASURED_PHASES", "MemoryBreakdown", "MiB",
    "OOMBoundary", "OPTIMIZERS", "PHASES", "StepMeasurement", "TERMS", "agreement_table", "build_head",
    "canonical_head", "dtype_name", "find_oom_boundary", "format_agreement", "head_step", "make_optimizer",
    "measure_head_step", "memory_report", "optimizer_copies", "plot_breakdown", "plot_memory_vs_classes",
    "plot_timeline", "predict_memory", "predicted_boundary", "_TERM_COLOURS", "_oom_child",
    "AllocationRow", "AllocationTable", "allocation_table", "symbolic_shape",
    "BACKBONES", "BackboneSpec", "MIXED_HEAD_PHASES", "MIXED_TERMS", "PRECISIONS", "STEP_PHASES", "STEP_TERMS",
    "TrainingStepBreakdown", "backbone_spec", "measure_backbone", "precision_config", "predict_training_step",
    "reference_backbone", "training_step_boundary", "explain_oom", "SAFE_SHARE", "available_bytes", "format_bytes",
]
