"""Signatures for loop detection: "the same call again" and "the same error again".

A stuck agent rarely repeats itself byte for byte: JSON keys come back in another order, with
other whitespace, and error messages carry timestamps or request ids. So calls are compared by
tool name plus *canonical* arguments (parsed, keys sorted, compact), and errors by tool name
plus the error text with digits and hex ids masked. Signatures are short digests so that a task
can count them in a small, bounded dict.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{4,})*|\d+")
_SPACE = re.compile(r"\s+")
_ERROR_PREFIX = re.compile(r"^\s*(error|exception|traceback|failed|failure|fatal)\b", re.IGNORECASE)
_ERROR_KEYS = ("error", "errors", "exception")


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def canonical_arguments(arguments: Any) -> str:
    """Arguments as canonical JSON (sorted keys, no whitespace); non-JSON text is whitespace-folded."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            return _SPACE.sub(" ", arguments).strip()
    else:
        parsed = arguments
    try:
        return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # not JSON-serialisable or absurdly deep: compare as text
        return _SPACE.sub(" ", str(arguments)).strip()


def call_signature(tool: str, arguments: Any) -> str:
    """Identity of a tool call for "same tool, same arguments" counting."""
    return _digest("call", tool, canonical_arguments(arguments))


def tool_error_text(text: str) -> str | None:
    """The error in a tool result's text, or None if the result does not look like an error.

    Recognised: JSON objects with an ``error``/``errors``/``exception`` key (or ``is_error``/
    ``isError`` true, or ``ok``/``success`` false), and text starting with error, exception,
    traceback, failed, failure or fatal.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            for key in _ERROR_KEYS:
                if obj.get(key):
                    return json.dumps(obj[key], sort_keys=True)
            if obj.get("is_error") is True or obj.get("isError") is True or obj.get("ok") is False:
                return json.dumps(obj, sort_keys=True)
            if obj.get("success") is False:
                return json.dumps(obj, sort_keys=True)
            return None
    if _ERROR_PREFIX.match(text):
        return text
    return None


def error_signature(tool: str, error_text: str) -> str:
    """Identity of a tool error, insensitive to numbers, ids and whitespace."""
    masked = _SPACE.sub(" ", _NUMBERS.sub("#", error_text[:4096])).strip().lower()
    return _digest("error", tool, masked)
