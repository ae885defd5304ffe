"""Leader election on a ``coordination.k8s.io`` Lease, as client-go's leaderelection does it.

Two or more operator replicas run; only the leader reconciles and evaluates, so automatic
suspension keeps working while one pod is drained, OOM-killed or upgraded. A candidate takes the
Lease when its holder stopped renewing it for ``lease_duration`` -- measured on the candidate's
own clock from when it last saw the Lease change, so clock skew between nodes does not matter --
and every write carries the resourceVersion it read, so two candidates can never both win.

The leader renews every ``renew_interval``; if it cannot renew for ``renew_deadline`` it must
stop acting (the caller stops the operator and the process exits, to come back as a candidate):
it may no longer be the only writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentfleet.kube.client import Kube, KubeError

log = logging.getLogger("agentfleet.lease")


def micro_time(now: datetime | None = None) -> str:
    """A MicroTime as the API wants it."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseSettings:
    namespace: str
    name: str = "agentfleet-operator"
    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    renew_interval: float = 2.0
    retry_interval: float = 1.0


class LeaderElector:
    def __init__(
        self, kube: Kube, identity: str, settings: LeaseSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.identity = identity
        self.settings = settings
        self.clock = clock
        self.is_leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0

    def _lease(self, existing: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        spec = dict((existing or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if existing else 0)
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.settings.lease_duration)),
            renewTime=now,
        )
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
            "spec": spec,
        }
        if existing is not None:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return body

    async def try_acquire_or_renew(self) -> bool:
        """One round; True if this candidate holds the Lease afterwards."""
        s = self.settings
        existing = await self.kube.get("Lease", s.namespace, s.name)
        now = self.clock()
        if existing is None:
            try:
                await self.kube.create(self._lease(None))
            except KubeError as exc:
                if exc.status == 409:  # someone else created it first
                    return False
                raise
            return self._won(now)
        spec = existing.get("spec") or {}
        holder, renewed = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
        if (holder, renewed) != self._observed:
            self._observed, self._observed_at = (holder, renewed), now
        if holder and holder != self.identity and now - self._observed_at < s.lease_duration:
            return self._lost()
        try:
            await self.kube.replace(self._lease(existing))
        except KubeError as exc:
            if exc.status == 409:  # another candidate wrote first
                return self._lost()
            raise
        return self._won(now)

    def _won(self, now: float) -> bool:
        if not self.is_leader:
            log.warning("became the leader", extra={"identity": self.identity})
        self.is_leader, self._last_renew = True, now
        return True

    def _lost(self) -> bool:
        if self.is_leader:
            log.warning("lost the lease", extra={"identity": self.identity})
        self.is_leader = False
        return False

    async def acquire(self) -> None:
        """Return once this candidate is the leader."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except (TimeoutError, KubeError, OSError) as exc:
                log.warning("leader election round failed: %s", exc)
            await asyncio.sleep(self.settings.retry_interval)

    async def hold(self) -> None:
        """Renew until renewal fails for ``renew_deadline``; then return (leadership is lost)."""
        while True:
            await asyncio.sleep(self.settings.renew_interval)
            try:
                if not await self.try_acquire_or_renew():
                    return
            except (TimeoutError, KubeError, OSError) as exc:
                log.warning("renewing the lease failed: %s", exc)
                if self.clock() - self._last_renew > self.settings.renew_deadline:
                    self.is_leader = False
                    return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        if not self.is_leader:
            return
        s = self.settings
        try:
            existing = await self.kube.get("Lease", s.namespace, s.name)
            if existing and (existing.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._lease(existing)
                body["spec"]["holderIdentity"] = ""
                body["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(body)
        except (TimeoutError, KubeError, OSError) as exc:
            log.warning("releasing the lease failed: %s", exc)
        self.is_leader = False
