"""Writing ``AgentPolicy.status`` (covered agents, violations) from the in-memory indexes.

A periodic census rather than a write per agent event: the counts change when agents or
namespaces do, and a policy's status is read by people (`kubectl get agp`), not by a control
loop, so a few seconds of lag cost nothing while a write per agent reconcile would be a storm.
Only changed counts are written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentfleet.api import names
from agentfleet.api.types import AgentPolicy
from agentfleet.kube.client import Kube, KubeError
from agentfleet.policy.census import census

log = logging.getLogger("agentfleet.policy-status")


class PolicyStatusWriter:
    def __init__(
        self,
        kube: Kube,
        policies: Callable[[], list[AgentPolicy]],
        agents: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]],
        labels_of: Callable[[str], Mapping[str, str]],
        interval: float = 5.0,
    ) -> None:
        self.kube = kube
        self.policies = policies
        self.agents = agents
        self.labels_of = labels_of
        self.interval = interval
        self._written: dict[str, dict[str, int | None]] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.write_once()
            except asyncio.CancelledError:
                raise
            except KubeError as exc:  # transient; the next round tries again
                log.warning("writing AgentPolicy status failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def write_once(self) -> int:
        """One census of every policy; returns the number of status writes."""
        agents = list(self.agents())
        writes = 0
        for policy in self.policies():
            name = policy.metadata.name
            want = census(policy, agents, self.labels_of)
            have = policy.status.wire() if policy.status is not None else {}
            if self._written.get(name) == want or {k: have.get(k) for k in want} == want:
                self._written[name] = want
                continue
            try:
                await self.kube.merge_patch(names.POLICY_KIND, None, name, {"status": want}, subresource="status")
            except KubeError as exc:
                if exc.status != 404:
                    raise
            self._written[name] = want
            writes += 1
        return writes
