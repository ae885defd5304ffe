"""Exact arithmetic on the API's string units, matching what CEL's ``duration()`` and
``quantity()`` make of them at admission."""

from __future__ import annotations

import re
from decimal import Decimal

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}


def parse_duration(text: str) -> Decimal:
    """Seconds in a Go-style duration ("1h30m", "1.5h", "500ms"), exactly; ValueError otherwise."""
    pos, total = 0, Decimal(0)
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total
