"""Interactive widgets of the lessons. Each widget's callback is a plain, tested function (lessons 02, 07)."""
from __future__ import annotations

from .common import figure_html, resolve_num_classes
from .dcc import (
    DCC_SWEEP_PARAM,
    dcc_size,
    dcc_size_text,
    dcc_size_widget,
    interpolate_sweep,
    plot_dcc_size,
)
from .will_it_fit import (
    CARDS_GIB,
    DEVICE_CHOICES_GIB,
    KEY_ENCODER_PARAMS,
    MAX_WIDGET_CLASSES,
    OFFICIAL_CONTAINER_RATIO,
    _HEAD_LABELS,
    _OPTIMIZER_LABELS,
    dataset_for,
    fit_curve,
    fit_verdict,
    plot_fit_curve,
    verdict_html,
    verdict_text,
    will_it_fit_widget,
)
