"""What both widgets share: a figure as inline HTML, N from a number or a dataset name, a result's check (lessons 02, 07)."""
from __future__ import annotations

from typing import Any

from ..checks import ArgumentError, as_int
from ..memory import DATASETS


def figure_html(fig) -> str:
    """`fig` (tight layout) as an <img> with an inline PNG, the one the inline backend would show; closes it.

    The widgets show their plot in an HTML widget rather than an Output widget: a notebook
    executor (nbclient, behind `make notebooks`) copies an Output widget's large PNG back to the
    kernel and can hang doing so, while an HTML widget's value only travels to the page."""
    import base64

    import matplotlib.pyplot as plt
    from IPython.core.pylabtools import print_figure

    try:
        fig.tight_layout()
        png = print_figure(fig, "png", bbox_inches="tight")  # matplotlib_inline's PNG formatter
    finally:
        plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%" alt="plot">'


def _dataset_size(name: Any) -> int | None:
    """The identities of the dataset `name` of `DATASETS` (any case: 'webface42m'), else None."""
    if isinstance(name, str):
        for key, n in DATASETS.items():
            if key.lower() == name.strip().lower():
                return n
    return None


def resolve_num_classes(num_classes: int | str) -> int:
    """N from a number of identities (1e6 accepted, 10.7 refused) or a dataset name of `DATASETS`
    (any case); an ArgumentError (a ValueError) names the argument and what is allowed."""
    n = _dataset_size(num_classes)
    if n is not None:
        return n
    try:
        return as_int("num_classes", num_classes, 2)
    except ArgumentError:
        raise ArgumentError("num_classes", f"must be a whole number of identities >= 2 or a dataset name of "
                                           f"{sorted(DATASETS)} (any case), got {num_classes!r}") from None


def _check_result(name: str, result: Any, keys: tuple[str, ...], made_by: str) -> dict[str, Any]:
    """`result` if it is a dict with `keys` (what `made_by` returns), else an ArgumentError saying so."""
    if not isinstance(result, dict):
        raise ArgumentError(name, f"must be the dict {made_by} returns, got {type(result).__name__}")
    missing = [k for k in keys if k not in result]
    if missing:
        raise ArgumentError(name, f"must be the dict {made_by} returns; it lacks {missing}")
    return result
