"""Output helpers of the kubectl plugin (pure): kubectl-style tables, ages, JSON and YAML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from agentfleet.api.units import cli_duration_seconds

OUTPUT_FORMATS = ("wide", "json", "yaml")
"""Values of ``-o/--output``; without it the output is a table."""

NONE = "-"
"""What a table shows for an unknown or unset value."""

COLUMN_GAP = 3
"""Spaces between columns, as kubectl's tab writer pads them."""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces; the last column is not padded, so no
    line ends in whitespace. Headers are upper-cased as kubectl prints them."""
    heads = [h.upper() for h in headers]
    widths = [len(h) for h in heads]
    for row in rows:
        if len(row) != len(heads):
            raise ValueError(f"row has {len(row)} cells, the table has {len(heads)} columns: {row!r}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [heads, *rows]:
        cells = [cell.ljust(width + COLUMN_GAP) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append(("".join(cells) + row[-1]).rstrip())
    return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """A duration the way kubectl prints ages (k8s.io/apimachinery HumanDuration): "45s",
    "5m30s", "12m", "3h25m", "20h", "3d4h", "12d", "2y30d", "8y"."""
    s = max(int(seconds), 0)
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp ("2025-01-02T03:04:05Z", with or without fraction or offset)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age(value: Any, now: datetime) -> str:
    """Time since ``value`` (RFC 3339) as kubectl prints it, or "-" when unknown."""
    when = parse_time(value)
    return human_duration((now - when).total_seconds()) if when else NONE


def cell(value: Any) -> str:
    """One table cell: "-" for None or an empty string, otherwise ``str(value)``."""
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)].rstrip() + "…"


def dump(value: Any, fmt: str) -> str:
    """``value`` as JSON (indented, like kubectl) or YAML (block style, keys in order)."""
    if fmt == "json":
        return json.dumps(value, indent=4, ensure_ascii=False)
    if fmt == "yaml":
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def parse_duration(text: str) -> float:
    """Seconds in a kubectl-style duration: "30s", "2m", "1h30m", "500ms", or a bare number of
    seconds ("45"). Raises ValueError with a readable message otherwise."""
    try:
        return cli_duration_seconds(text)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: a number of seconds, or units: 30s, 2m, 1h30m") from None
