"""Argument checks shared by the whole package: integers and real numbers with clear messages.

Every public function of smcdiff checks its scalar arguments at the boundary, before any work,
and says what it expected. Two rules hold everywhere:

* an *integer* argument accepts a Python ``int``, a NumPy integer or a 0-d integer tensor, and
  refuses ``bool`` (``True`` is not a step count) and floats (``2.0`` is refused: say ``2``);
* a *real* argument accepts a Python or NumPy number or a 0-d real tensor, refuses ``bool``,
  strings and ``None`` (``TypeError``), and refuses NaN and ±inf unless the caller allows
  infinity (``ValueError``).

    >>> import numpy as np
    >>> from smcdiff.checks import check_int, check_real
    >>> check_int(np.int64(8), "num_steps", minimum=1)
    8
    >>> check_real(7, "rho", low=0, low_open=True)
    7.0
    >>> check_real(float("nan"), "rho", low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: rho must be > 0, got nan
    >>> check_int(True, "num_steps")
    Traceback (most recent call last):
    ...
    TypeError: num_steps must be an int, got bool True
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

__all__ = ["check_int", "check_real", "check_size", "check_steps"]


def _is_bool(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool


def _shown(value) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int; ``TypeError`` unless an integer (not bool), ``ValueError`` out of range."""
    if _is_bool(value) or isinstance(value, (float, np.floating)):
        raise TypeError(f"{name} must be an int, got {_shown(value)}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {_shown(value)}") from None
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        lo = "" if minimum is None else f" >= {minimum}"
        hi = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{name} must be an int{lo}{' and' if lo and hi else ''}{hi}, got {out}")
    return out


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a Python float, inside the given bounds.

    ``TypeError`` unless a real number (Python / NumPy scalar or 0-d real tensor; not bool, str,
    None); ``ValueError`` for NaN, for ±inf (unless ``allow_inf``) and outside
    ``low``..``high`` (``low_open`` / ``high_open`` exclude the end points). Messages read
    ``"<name> must be in [0, 1], got nan"``.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not _is_bool(value) \
            and not value.is_complex():
        value = value.item()
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_shown(value)}")
    out = float(value)
    bad = math.isnan(out) or (math.isinf(out) and not allow_inf)
    if low is not None:
        bad = bad or out < low or (low_open and out == low)
    if high is not None:
        bad = bad or out > high or (high_open and out == high)
    if bad:
        want = _interval(low, high, low_open, high_open)
        if want != "finite" and not allow_inf and math.isinf(out) and not math.isnan(out):
            want = f"finite and {want}"
        raise ValueError(f"{name} must be {want}, got {out!r}")
    return out


def check_size(name: str, value) -> int:
    """``value`` as an int >= 1 (numpy integers accepted; bools and floats refused with ``ValueError``)."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or isinstance(value, torch.Tensor) and value.dim():
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    out = int(value.__index__())
    if out < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return out


def check_steps(steps, T: int, name: str) -> frozenset | None:
    """``steps`` (a collection of step indices, or None) as a frozenset inside [0, T − 1]."""
    if steps is None:
        return None
    try:
        steps = frozenset(int(i) for i in steps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a collection of step indices, got {steps!r}") from None
    bad = sorted(i for i in steps if not 0 <= i < T)
    if bad:
        raise ValueError(f"{name} must lie in [0, {T - 1}], got {bad}")
    return steps
