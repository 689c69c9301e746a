"""The analytic memory model: one head training step and the whole training step, in bytes (lessons 02, 09).

The names of the model, gathered from the modules that hold them (import from here, or from the
module itself): `head_model` (the head step's terms, phases and `predict_memory`), `catalog`
(datasets, device capacities, precisions, backbones), `backbone_measure` (measuring what a
backbone adds), `whole_step` (`predict_training_step`: head, backbone and key encoder) and
`explain` (`explain_oom`, advice after an out-of-memory).
"""
from __future__ import annotations

from .backbone_measure import backbone_spec, measure_backbone, reference_backbone  # noqa: F401
from .catalog import (  # noqa: F401
    _BACKBONE_SOURCE,
    _PRECISION_ALIASES,
    BACKBONES,
    DATASETS,
    DEVICE_CAPACITIES_GIB,
    PRECISIONS,
    BackboneSpec,
    precision_config,
)
from .explain import _HEAD_NAMES, _OOM_KNOBS, explain_oom  # noqa: F401
from .guard import format_bytes  # noqa: F401
from .head_model import (  # noqa: F401
    _HEAD_ALIASES,
    _MIXED_FC_PHASES,
    _UNIT_SCALES,
    DTYPE_BYTES,
    HEAD_PHASES,
    MEASURED_PHASES,
    MIXED_HEAD_PHASES,
    MIXED_TERMS,
    OPTIMIZERS,
    PHASES,
    TERMS,
    GiB,
    MemoryBreakdown,
    MiB,
    _largest_fitting,
    _tables,
    _unit_scale,
    canonical_head,
    check_optimizer,
    dtype_name,
    optimizer_copies,
    predict_memory,
    predicted_boundary,
)
from .whole_step import (  # noqa: F401
    _KEY_ENCODER_TERMS,
    STEP_PHASES,
    STEP_TERMS,
    TrainingStepBreakdown,
    predict_training_step,
    training_step_boundary,
)
