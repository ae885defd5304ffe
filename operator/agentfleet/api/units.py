"""Exact arithmetic on the API's string units, matching what CEL's ``duration()`` and
``quantity()`` make of them at admission.

One parser for every reader (operator, evaluator, guard, kubectl plugin): a duration means the
same thing wherever it is read, and a bound checked here holds everywhere.
"""

from __future__ import annotations

import re
from decimal import Decimal

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_BARE_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_DURATION = "8760h"
"""The longest duration the API accepts (one year): the CRD schema refuses longer ones, and every
reader refuses them too, so an object stored before the bound cannot overflow a timer."""
MAX_SECONDS = Decimal(8760 * 3600)


def parse_duration(text: str) -> Decimal:
    """Seconds in a Go-style duration ("1h30m", "1.5h", "500ms"), exactly; ValueError otherwise."""
    pos, total = 0, Decimal(0)
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: use units such as 500ms, 30s, 5m, 1h30m")
    if total > MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: at most {MAX_DURATION}")
    return total


def duration_seconds(text: str) -> float:
    """``parse_duration`` as a float, for timers and deadlines."""
    return float(parse_duration(text))


def cli_duration_seconds(text: str) -> float:
    """A kubectl-style duration: units as in the API, or a bare number of seconds ("45")."""
    value = text.strip()
    if _BARE_SECONDS.fullmatch(value):
        return float(value)
    return duration_seconds(value)
