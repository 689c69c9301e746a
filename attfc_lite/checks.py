"""Validation of arguments where they enter: one helper per kind of value, used by the library,
the command line and the widgets alike (every lesson).

Each raises `ArgumentError` (a ValueError) whose message starts with the argument's name, says
what is allowed and shows what was given, e.g. ``num_classes must be a whole number >= 2, got 10.7``.
The command line maps the name to its option (``--classes``) and prints it without a traceback.
"""
from __future__ import annotations

import math
import numbers

# 2**53: above it a float no longer holds every integer, so "1e17" cannot mean one exact count.
_EXACT_FLOAT_INT = 2 ** 53


class ArgumentError(ValueError):
    """A bad value of the argument `name`; the message names it and what is allowed."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name} {message}")
        self.name = name


def _shown(value) -> str:
    """The value as given: short for floats, unless that would round it (1.0000001 is not "1")."""
    if not isinstance(value, float):
        return repr(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _scalar(value):
    """A Python number from a 0-d / 1-element tensor or array, else the value itself."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 or (hasattr(value, "numel") and value.numel() == 1):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def _bounds(minimum, maximum, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if low_open else '>='} {minimum:,}" if isinstance(minimum, int)
                     else f"{'>' if low_open else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if high_open else '<='} {maximum:,}" if isinstance(maximum, int)
                     else f"{'<' if high_open else '<='} {maximum:g}")
    return " and ".join(parts)


def as_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int, refusing what is not a whole number (10.7, "20.5e0", True, nan) and what
    lies outside [minimum, maximum]. A float that is exactly whole (1e6) is accepted."""
    value = _scalar(value)
    rule = "a whole number" + (f" {_bounds(minimum, maximum)}" if minimum is not None or maximum is not None else "")
    if isinstance(value, bool) or value is None:
        raise ArgumentError(name, f"must be {rule}, got {value!r}")
    if isinstance(value, str):
        return as_int(name, parse_number(name, value, whole=True), minimum, maximum)
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            raise ArgumentError(name, f"must be {rule}, got {_shown(value)}")
        if abs(f) > _EXACT_FLOAT_INT:
            raise ArgumentError(name, f"must be {rule} given exactly (write its digits), got {f:g}")
        out = int(f)
    else:
        raise ArgumentError(name, f"must be {rule}, got {type(value).__name__} {value!r}")
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        raise ArgumentError(name, f"must be {rule}, got {out:,}")
    return out


def as_float(name: str, value, minimum: float | None = None, maximum: float | None = None,
             low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite float in the given range (open ends where `low_open` / `high_open`);
    nan and inf are refused, as are booleans and strings that are not numbers."""
    value = _scalar(value)
    rule = "a finite number" + (f" {_bounds(minimum, maximum, low_open, high_open)}"
                                if minimum is not None or maximum is not None else "")
    if isinstance(value, str):
        value = parse_number(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(name, f"must be {rule}, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ArgumentError(name, f"must be {rule}, got {out}")
    if minimum is not None and (out < minimum or (low_open and out == minimum)):
        raise ArgumentError(name, f"must be {rule}, got {_shown(out)}")
    if maximum is not None and (out > maximum or (high_open and out == maximum)):
        raise ArgumentError(name, f"must be {rule}, got {_shown(out)}")
    return out


def parse_number(name: str, text: str, whole: bool = False):
    """A number written as text: "1000", "1e6", "1_000_000", "0.1". With `whole`, only whole
    numbers (an int), and "20.5e0" or "10.7" are refused rather than truncated."""
    s = text.strip()  # int() and float() take single underscores between digits, as Python does
    kind = "a whole number" if whole else "a number"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        raise ArgumentError(name, f"must be {kind}, got {text!r}") from None
    if not whole:
        return f
    if not math.isfinite(f) or not f.is_integer():
        raise ArgumentError(name, f"must be {kind}, got {text!r}")
    if abs(f) > _EXACT_FLOAT_INT:
        raise ArgumentError(name, f"must be {kind} given exactly (write its digits), got {text!r}")
    return int(f)


def as_choice(name: str, value, choices) -> str:
    """`value` if it is one of `choices` (compared as given)."""
    choices = list(choices)
    if value not in choices:
        raise ArgumentError(name, f"must be one of {choices}, got {value!r}")
    return value


def as_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(name, f"must be True or False, got {value!r}")
    return value


def as_device(name: str, value) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (N a whole number): the text, checked. Whether CUDA is
    present is checked when the device is used (`utils.default_device`)."""
    import torch

    if isinstance(value, torch.device):
        value = str(value)
    if not isinstance(value, str):
        raise ArgumentError(name, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    kind, sep, index = value.partition(":")
    canonical = index.isascii() and index.isdigit() and str(int(index)) == index and int(index) < 2 ** 16
    if value == "auto" or (kind in ("cpu", "cuda") and (not sep or (kind == "cuda" and canonical))):
        return value
    if kind == "cpu" and sep:
        raise ArgumentError(name, f"must be 'cpu' without an index (there is one CPU device), got {value!r}")
    raise ArgumentError(name, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N' with N a device number (0, 1, ...), "
                              f"got {value!r}")


def check_finite_tensor(name: str, tensor) -> None:
    """Refuse a tensor holding nan or inf, saying where the first one is."""
    import torch

    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ArgumentError(name, f"must hold finite numbers; {int(bad.sum())} of {tensor.numel()} are nan or inf "
                                  f"(the first at index {first})")


def cli_type(check, why: str | None = None, **limits):
    """An argparse `type` from a check above: argparse names the option in the error, and `why`
    (the cause of the limits) follows the rule."""
    import argparse

    def parse(text: str):
        try:
            return check("value", text, **limits)
        except ArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ") + (f" ({why})" if why else "")) from None

    parse.__name__ = check.__name__.removeprefix("as_")
    return parse
