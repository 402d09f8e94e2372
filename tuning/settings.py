"""The TUNING_ environment variables, every one read the same way.

A variable that is unset, empty or blank takes its default, so a deployment template that
writes `TUNING_GRACE_PERIOD=` behaves as one that leaves the line out. A number that is set but
out of range is a UsageError that names the variable, what it takes and what it got (at most
40 characters of it): one line and exit status 2, never a traceback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from tuning.errors import UsageError


def setting(name: str, environ: Mapping[str, str] | None = None) -> str:
    """$name without surrounding blanks: "" when it is unset, empty or blank."""
    environ = os.environ if environ is None else environ
    return environ.get(name, "").strip()


def whole_number_setting(name: str, default: int, *, low: int, high: int, unit: str,
                         environ: Mapping[str, str] | None = None) -> int:
    """$name as a whole number from `low` to `high` (in `unit`); unset: `default`."""
    text = setting(name, environ)
    if not text:
        return default
    # isdecimal, not isdigit: "²" is a digit to isdigit and not a number to int(); and no
    # more digits than `high` has, as int() refuses thousands of them with a traceback.
    if not (text.isdecimal() and len(text) <= len(str(high)) and low <= int(text) <= high):
        raise _out_of_range(name, "a whole number", unit, low, high, text)
    return int(text)


def number_setting(name: str, default: float, *, low: float, high: float, unit: str,
                   environ: Mapping[str, str] | None = None) -> float:
    """$name as a finite number from `low` to `high` (in `unit`); unset: `default`."""
    text = setting(name, environ)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # NaN fails every comparison, so "nan" and a non-number are out of range too.
    if not low <= value <= high:
        raise _out_of_range(name, "a number", unit, low, high, text)
    return value


def _out_of_range(name: str, kind: str, unit: str, low: float, high: float,
                  text: str) -> UsageError:
    return UsageError(f"{name} must be {kind} of {unit} from {_number(low)} to "
                      f"{_number(high)}, got {text[:40]!r}")


def _number(value: float) -> str:
    """A bound as a user would write it: 1048576, not 1.04858e+06."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
