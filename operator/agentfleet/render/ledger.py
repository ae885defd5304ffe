"""The shared budget ledger's password in a pod template the operator did not render today.

A rollback runs a pinned revision's recorded pod template (exact, by design), but the guard
config it mounts is rendered now, with today's ledger: a revision recorded before the platform
named a ledger (or named another password Secret) would start a guard told to read a password
file its template does not mount, and crash-loop. So the ledger's volume and the guard's mount
of it follow today's rendering, in a copy of the recorded template; nothing else in it changes.
"""

from __future__ import annotations

import copy
from typing import Any

from agentfleet.api.ledger import LEDGER_VOLUME
from agentfleet.api.names import GUARD_CONTAINER


def _guard(spec: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in spec.get("initContainers") or [] if c.get("name") == GUARD_CONTAINER), None)


def with_ledger_mount(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``recorded`` (a pinned revision's pod template) with the ledger password volume and the
    guard's mount of it exactly as in ``current`` (today's rendering of the same agent): added,
    replaced or removed. No other container ever gets the mount."""
    out = copy.deepcopy(recorded)
    spec, now = out.setdefault("spec", {}), current.get("spec") or {}
    volumes = [v for v in now.get("volumes") or [] if v.get("name") == LEDGER_VOLUME]
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != LEDGER_VOLUME] + copy.deepcopy(volumes)
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if "volumeMounts" in container:
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m.get("name") != LEDGER_VOLUME]
    guard, current_guard = _guard(spec), _guard(now)
    if guard is not None and current_guard is not None:
        mounts = [m for m in current_guard.get("volumeMounts") or [] if m.get("name") == LEDGER_VOLUME]
        if mounts:
            guard["volumeMounts"] = [*(guard.get("volumeMounts") or []), *copy.deepcopy(mounts)]
    return out
