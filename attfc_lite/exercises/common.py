"""The grading every check shares: one tolerance policy, common slips with hints, right / close / wrong printed (every lesson)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

RIGHT_RTOL = 1e-3  #: relative tolerance of a right real number
CLOSE_RTOL = 1e-2  #: relative tolerance of a close answer (real or whole)

TOLERANCE_POLICY = ("Real numbers: right within 0.1 % of the expected value, close within 1 %. "
                    "Counts, bytes and other whole numbers: right only when exact, close within 1 %. "
                    "Anything further off is wrong.")


@dataclass(frozen=True)
class Slip:
    """A common mistake: the value it leads to and what to look at."""

    value: float
    message: str


@dataclass(frozen=True)
class Spec:
    """What one check compares an answer with. `exact`: a whole number, right only when equal.
    `in_bytes`: answers in KiB, MiB, GiB, kB, MB, GB or bits are told to give bytes.
    `whole_hint`: said when a whole-number answer is close but not whole."""

    name: str
    expected: float
    exact: bool = False
    slips: tuple[Slip, ...] = ()
    hint: str = ""
    in_bytes: bool = False
    whole_hint: str = "The answer is a whole number: check how you rounded."

    def all_slips(self) -> tuple[Slip, ...]:
        """The listed slips and, with `in_bytes`, the unit slips, less those that would be right."""
        slips = list(self.slips)
        if self.in_bytes:
            units = ((2 ** 10, "KiB"), (2 ** 20, "MiB"), (2 ** 30, "GiB"), (1e3, "kB"), (1e6, "MB"), (1e9, "GB"))
            slips += [Slip(self.expected / unit, f"Give the answer in bytes, not in {name}.") for unit, name in units]
            slips.append(Slip(8 * self.expected, "That is a number of bits: give bytes (8 bits each)."))
        if self.exact:
            return tuple(s for s in slips if s.value != self.expected)
        return tuple(s for s in slips if not _near(s.value, self.expected, 2 * RIGHT_RTOL))


def _near(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * abs(b)


def _slips(*pairs) -> tuple[Slip, ...]:
    return tuple(Slip(float(v), m) for v, m in pairs)


def _as_number(answer) -> float:
    """One float from a number, a 0-d or one-element tensor, array, list or tuple; ValueError
    (with what to fix) otherwise."""
    if isinstance(answer, bool):
        raise ValueError(f"expected a number, got {answer!r}")
    if isinstance(answer, str):
        try:
            return float(answer.replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"expected a number, got the text {answer[:40]!r}") from None
    if isinstance(answer, numbers.Real):
        return float(answer)
    try:
        if isinstance(answer, torch.Tensor):
            flat = answer.detach().to("cpu", torch.float64).reshape(-1)
        else:
            import numpy as np

            flat = torch.from_numpy(np.asarray(answer, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"expected a number, got {type(answer).__name__} {str(answer)[:40]}") from None
    if flat.numel() != 1:
        raise ValueError(f"expected one number, got {flat.numel()} numbers")
    return float(flat[0])


def _grade(answer, spec: Spec) -> str | None:
    """Print right / close / wrong for `answer` against `spec` (see the package docstring for the
    policy) and return the verdict, or None when not answered. Never prints the expected value."""
    name = spec.name
    if answer is None:
        print(f"{name}: not answered yet (replace None with your answer)")
        return None
    try:
        value = _as_number(answer)
    except ValueError as err:
        print(f"{name}: wrong: {err}")
        return "wrong"
    if not math.isfinite(value):
        print(f"{name}: wrong: {value} is not a finite number")
        return "wrong"
    expected = float(spec.expected)
    if (value == expected) if spec.exact else _near(value, expected, RIGHT_RTOL):
        print(f"{name}: right " + ("(exact)" if spec.exact else "(within 0.1 %)"))
        return "right"
    close = _near(value, expected, CLOSE_RTOL)
    matched = None
    for slip in spec.all_slips():
        window = min(CLOSE_RTOL * abs(slip.value), abs(slip.value - expected) / 2)
        distance = abs(value - slip.value)
        if distance <= window and (matched is None or distance < abs(value - matched.value)):
            matched = slip
    if matched is not None:
        print(f"{name}: {'close' if close else 'wrong'}. {matched.message}")
        return "close" if close else "wrong"
    # A right method rounded to one or two significant digits (not for small counts, where that is an off-by-one)
    if (not spec.exact or abs(expected) >= 1000) and value != 0 \
            and any(value == float(f"{expected:.{k}g}") for k in (1, 2)) \
            and not _near(value, expected, RIGHT_RTOL):
        print(f"{name}: {'close' if close else 'wrong'}: your method may be right, but you rounded too early: "
              "give four significant digits")
        return "close" if close else "wrong"
    if close and spec.exact:
        why = spec.whole_hint if value != round(value) else "check the small terms and the rounding."
        print(f"{name}: close (within 1 %, but a whole number is right only when exact): {why}")
        return "close"
    if close:
        print(f"{name}: close (within 1 %, not 0.1 %): redo it without rounding the intermediate numbers, "
              "and give four significant digits")
        return "close"
    print(f"{name}: wrong (more than 1 % off). {spec.hint}".rstrip())
    return "wrong"
