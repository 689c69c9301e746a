"""Measuring one head training step: the CUDA allocator or the CPU profiler's allocation records (lesson 02).

The names of the measurement, gathered from the modules that hold them (import from here, or
from the module itself): `head_measure` (the head step and `measure_head_step`), `measure_cpu`
(the profiler), `measure_cuda` (the allocator), `counting` (unique bytes, running totals,
timing), `model_phases` (the model's phases in a measured step), `agreement` (`memory_report`,
the model against the measurement) and `allocations` (`allocation_table`). To replace one of
them in a test, patch the module that calls it (e.g. `agreement.measure_head_step`).
"""
from __future__ import annotations

from . import guard  # noqa: F401
from .agreement import _json_safe, agreement_table, format_agreement, memory_report  # noqa: F401
from .allocations import (  # noqa: F401
    _ALLOCATING_HELPERS,
    _HEAD_TITLES,
    _NODE_PREFIX,
    AllocationRow,
    AllocationTable,
    _count,
    _made_by,
    allocation_table,
    symbolic_shape,
)
from .counting import _held_tensors, _running, _unique_bytes, timed  # noqa: F401
from .head_measure import (  # noqa: F401
    _MODEL_KNOBS,
    _MODEL_ONLY,
    StepMeasurement,
    _device,
    _head_kind,
    _sizes_text,
    build_head,
    head_dtype,
    head_step,
    make_optimizer,
    measure_head_step,
    step_inputs,
)
from .head_model import _unit_scale, check_optimizer, dtype_name, predict_memory  # noqa: F401
from .measure_cpu import (  # noqa: F401
    _MARK,
    _SPLIT,
    _CpuProfile,
    _profile_cpu,
    _profile_cpu_step,
    _quiet_stderr_fd,
    _split_indices,
)
from .measure_cuda import _trace_cuda_step  # noqa: F401
from .model_phases import (  # noqa: F401
    _autograd_graph,
    _joined,
    _model_phase_hooks,
    _model_phase_labels,
    _split_nodes,
    _split_phase_names,
)
