"""One writer per AgentDeployment at a time, whoever decides the change.

Every change to an agent's children and status -- a spec change or a resume through a kopf
handler, a suspension or rollback decided by the evaluator, a policy change -- runs inside
``exclusive(kube, namespace, name)``. Before this, the evaluator carried out an action outside
kopf while a handler holding an older copy of the object ran for the same agent: the handler
applied the old revision's template after the rollback's and replayed its stale conditions over
the evaluator's. Inside the lock, a writer starts from the freshest status this process knows
(``kube.status.written``), so it never decides on what an earlier writer already changed.

One asyncio lock per object, created on first use and dropped when no one holds or waits for
it, so the table stays as small as the number of agents being written at this moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from agentfleet.kube.client import Kube, PerClient


class Writers:
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def exclusive(self, namespace: str, name: str) -> AsyncIterator[None]:
        key = (namespace, name)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


writers = PerClient(Writers)
"""The writers of the process, per client (every writer in a process shares one client)."""


def exclusive(kube: Kube, namespace: str, name: str) -> AbstractAsyncContextManager[None]:
    """Hold the one-writer lock of ``namespace/name``."""
    return writers(kube).exclusive(namespace, name)
