"""The shared ledger: one set of budgets for every replica, revision and restart, in Redis.

Each budget window is three keys: a hash ``S`` (``held`` by calls in flight, ``used`` for a
calendar window or one field per 10 s bucket for the sliding hour), a hash ``H`` (request id ->
units held) and a sorted set ``Z`` (request id -> when the hold expires, server time). Three
Lua scripts run atomically on the server (Redis runs one script at a time):

- ``reserve``: first charges every *expired* hold in full (its guard died, or lost the ledger,
  before settling: the call may have been billed, so the ledger assumes the worst), then checks
  every budget (used + held + this call <= limit) and, only if all fit, holds the call in each.
  A request id that is already held is not held twice (a retried reserve).
- ``settle``: for each budget still holding the request, drops the hold and adds what the call
  used. A second settle, or one after the hold expired and was charged, finds nothing and adds
  nothing: settles are idempotent per request id, so nothing is counted twice.
- ``charge``: adds spend made while the ledger was unreachable (``LocalAllowance``), once per
  batch id (a marker key with ``SET NX``), so a reconciliation retried after a timeout that
  actually landed is not counted twice.

Time comes from the server (``TIME``), so guards on nodes with skewed clocks agree on when a
hold expires and which sliding bucket spend falls into; calendar windows are named by the guard
(their id is the window's start, computed with ``zoneinfo``) and expire two days after they end.

Every call has a timeout (``ledger.timeout``, connect included), the pool is bounded
(``maxConnections``; a call waits for a free connection within the same timeout) and the
client does not retry by itself. When a call fails the ledger is *unavailable*: reservations
follow ``onUnavailable`` without touching the network (fail closed, or the replica's local
allowance), settles queue up (bounded), and one background task probes the server until it
answers, then flushes the queued settles and reconciles the local spend before the ledger is
used again.

Keys of all budgets one call touches are written by one script, so they must live on one
server: a single Redis (or a primary with replicas and Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from agentfleet.api.guardconfig import LedgerConfig
from agentfleet.api.types import OnLedgerUnavailable
from agentfleet.api.units import duration_seconds
from agentfleet.guard.ledger import (
    HOUR,
    Budget,
    Charge,
    Hold,
    Span,
    calendar_retry,
    exhausted,
    from_nanos,
    to_nanos,
    too_large,
    unavailable,
)
from agentfleet.guard.metrics import GuardMetrics

LEDGER_ERRORS = (RedisError, TimeoutError, OSError)
"""What makes the ledger unavailable (``redis`` raises its own ConnectionError/TimeoutError,
``asyncio.timeout`` the built-in TimeoutError)."""
GRACE = 2 * 86400
"""Seconds a calendar window's keys outlive the window (late settles, yesterday's status)."""
MAX_PENDING = 100_000
"""Settles queued while the ledger is unreachable; beyond it the oldest are dropped (their holds
expire and are charged in full: conservative, never an undercount)."""
BATCH = 128
"""Reservations (or settles) sent in one round trip (a pipeline of EVALSHA)."""
RESERVE_PIPELINES = 4
"""Reservation pipelines in flight at once: concurrent calls share round trips instead of
queueing for connections one by one."""

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local HOUR = 3600000

local function add(S, kind, bucket, units)
  if units <= 0 then return end
  if kind == 1 then
    redis.call('HINCRBY', S, 'b' .. (now - now % bucket), units)
  else
    redis.call('HINCRBY', S, 'used', units)
  end
end

local function touch(S, H, Z, kind, expire)
  for _, k in ipairs({S, H, Z}) do
    if kind == 1 then redis.call('PEXPIRE', k, expire) else redis.call('EXPIREAT', k, expire) end
  end
end

-- Holds whose guard never settled them are charged in full: the call may have been billed.
local function purge(S, H, Z, kind, bucket)
  local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(gone) do
    local amt = tonumber(redis.call('HGET', H, id) or 0)
    if amt ~= 0 then
      redis.call('HINCRBY', S, 'held', 0 - amt)
      redis.call('HINCRBY', S, 'expired', amt)
      add(S, kind, bucket, amt)
    end
    redis.call('HDEL', H, id)
  end
  if #gone > 0 then redis.call('ZREM', Z, unpack(gone)) end
end

local function buckets(S, bucket)
  local all = redis.call('HGETALL', S)
  local horizon = now - HOUR
  local starts, units, old = {}, {}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.byte(f, 1) == 98 then
      local s = tonumber(string.sub(f, 2))
      if s + bucket <= horizon then
        old[#old + 1] = f
      else
        starts[#starts + 1] = s
        units[s] = tonumber(all[i + 1])
      end
    end
  end
  if #old > 0 then redis.call('HDEL', S, unpack(old)) end
  return starts, units
end

local function used(S, kind, bucket)
  if kind == 0 then return tonumber(redis.call('HGET', S, 'used') or 0) end
  local starts, units = buckets(S, bucket)
  local total = 0
  for _, s in ipairs(starts) do total = total + units[s] end
  return total
end

-- Milliseconds until `over` settled units leave the sliding hour (0: held units block).
local function retry(S, over, bucket)
  local starts, units = buckets(S, bucket)
  table.sort(starts)
  local freed = 0
  for _, s in ipairs(starts) do
    freed = freed + units[s]
    if freed >= over then return s + bucket + HOUR - now end
  end
  return 0
end
"""

RESERVE = (
    _COMMON
    + """
-- KEYS: S, H, Z per budget. ARGV: rid, ttl ms, n, then per budget: kind, limit (-1: none),
-- amount, expire, bucket ms.
local rid, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[2], rid) == 1 then return {0} end
local levels = {0}
for i = 1, n do
  local S, H, Z = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 3 + (i - 1) * 5
  local kind, limit, amount, bucket = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 5])
  purge(S, H, Z, kind, bucket)
  local u = used(S, kind, bucket)
  local h = tonumber(redis.call('HGET', S, 'held') or 0)
  if limit >= 0 then
    if amount > limit then return {i, 1, u, h, 0} end
    local over = u + h + amount - limit
    if over > 0 then
      local r = 0
      if kind == 1 then r = retry(S, over, bucket) end
      return {i, 2, u, h, r}
    end
  end
  levels[i + 1] = u + h + amount
end
for i = 1, n do
  local S, H, Z = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 3 + (i - 1) * 5
  local kind, amount, expire = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  redis.call('HINCRBY', S, 'held', amount)
  redis.call('HSET', H, rid, amount)
  redis.call('ZADD', Z, now + ttl, rid)
  touch(S, H, Z, kind, expire)
end
return levels
"""
)

SETTLE = (
    _COMMON
    + """
-- KEYS: S, H, Z per budget. ARGV: rid, n, then per budget: kind, units used, expire, bucket ms.
local rid, n = ARGV[1], tonumber(ARGV[2])
local applied = 0
for i = 1, n do
  local S, H, Z = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 2 + (i - 1) * 4
  local kind, units, expire, bucket = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4])
  local amt = redis.call('HGET', H, rid)
  if amt then
    redis.call('HINCRBY', S, 'held', 0 - tonumber(amt))  -- never "-0", which HINCRBY refuses
    redis.call('HDEL', H, rid)
    redis.call('ZREM', Z, rid)
    add(S, kind, bucket, units)
    touch(S, H, Z, kind, expire)
    applied = applied + 1
  end
end
return applied
"""
)

CHARGE = (
    _COMMON
    + """
-- KEYS: S, H, Z per entry, then the batch marker. ARGV: n, then per entry: kind, units, expire,
-- bucket ms.
local n = tonumber(ARGV[1])
if not redis.call('SET', KEYS[3 * n + 1], '1', 'NX', 'EX', 604800) then return 0 end
for i = 1, n do
  local S, H, Z = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 1 + (i - 1) * 4
  local kind, units, expire, bucket = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4])
  add(S, kind, bucket, units)
  redis.call('HINCRBY', S, 'reconciled', units)
  touch(S, H, Z, kind, expire)
end
return 1
"""
)

STATUS = (
    _COMMON
    + """
-- KEYS: S, H, Z per budget. ARGV: n, then per budget: kind, bucket ms. Charges expired holds.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local S, H, Z = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local kind, bucket = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  purge(S, H, Z, kind, bucket)
  out[#out + 1] = used(S, kind, bucket)
  out[#out + 1] = tonumber(redis.call('HGET', S, 'held') or 0)
  out[#out + 1] = redis.call('HLEN', H)
  out[#out + 1] = tonumber(redis.call('HGET', S, 'expired') or 0)
  out[#out + 1] = tonumber(redis.call('HGET', S, 'reconciled') or 0)
end
return out
"""
)


@dataclass(slots=True)
class _Pending:
    hold: Hold
    used: Charge
    until: float
    """Monotonic time after which the hold has expired on the server (a settle is a no-op)."""


class RedisLedger:
    """The shared ledger (``ledger.SpendLedger``) for one guard."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        cfg: LedgerConfig,
        *,
        hold_ttl: float,
        password: str | None = None,
        metrics: GuardMetrics | None = None,
        log: Callable[..., None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.budgets = tuple(budgets)
        self.cfg = cfg
        self.timeout = duration_seconds(cfg.timeout)
        self.hold_ttl = hold_ttl
        self._metrics = metrics
        if metrics is not None:
            metrics.bind_ledger()
        self._log = log or (lambda event, **fields: None)
        self._wall = wall
        self.pool = BlockingConnectionPool.from_url(
            cfg.url,
            max_connections=cfg.max_connections,
            timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            password=password,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.client: Redis = Redis(connection_pool=self.pool)
        self._charge = self.client.register_script(CHARGE)
        self._status = self.client.register_script(STATUS)
        self._shas: dict[str, str] = {}
        self._reserves: deque[tuple[list[str], list[Any], asyncio.Future[Any]]] = deque()
        self._reserve_wake = asyncio.Event()
        self._batches = asyncio.Semaphore(RESERVE_PIPELINES)
        self._reserver: asyncio.Task[None] | None = None
        self._inflight_batches: set[asyncio.Task[None]] = set()
        self.available = False
        self._started = False
        self._closing = False
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.local_tokens = 0
        """Tokens this replica holds or spent on its own allowance and the ledger has not taken yet."""
        self.local_nanos = 0
        self._unreconciled: dict[tuple[int, str], int] = {}
        """(budget index, window id) -> units spent on the local allowance, not yet in the ledger."""
        self._unreconciled_charge = Charge(0, 0)
        self._batch: tuple[str, dict[tuple[int, str], int], Charge] | None = None
        self._levels: dict[str, int] = {}
        self.dropped = 0
        """Settles given up (queue full, or their hold expired meanwhile)."""

    # ------------------------------------------------------------------ keys and arguments

    def _keys(self, i: int, span_id: str) -> list[str]:
        b = self.budgets[i]
        base = f"{self.cfg.key_prefix}:{b.scope}:{b.name}:{span_id}"
        return [base, base + ":h", base + ":z"]

    def _expire(self, i: int, span: Span) -> int:
        """Sliding hour: milliseconds to keep its keys after a write; calendar: when they expire."""
        if self.budgets[i].window.sliding:
            return int((HOUR + self.hold_ttl + 60) * 1000)
        return int(span.end) + GRACE

    def _kind(self, i: int) -> int:
        return 1 if self.budgets[i].window.sliding else 0

    def _bucket_ms(self, i: int) -> int:
        return self.budgets[i].window.bucket * 1000

    def _spans(self) -> tuple[Span, ...]:
        now = self._wall()
        return tuple(b.window.span(now) for b in self.budgets)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (a ledger that is down at start is just unavailable) and start the settler."""
        self._started = True
        self._worker = asyncio.create_task(self._settler(), name="ledger-settler")
        self._reserver = asyncio.create_task(self._reserve_loop(), name="ledger-reserver")
        try:
            async with asyncio.timeout(self.timeout):
                await self._load_scripts()
        except LEDGER_ERRORS as exc:
            self._lost(exc)
            return
        self._up()

    async def _load_scripts(self) -> None:
        """Load the scripts (again after a server restart emptied its script cache)."""
        for name, text in (("reserve", RESERVE), ("settle", SETTLE)):
            self._shas[name] = str(await self.client.script_load(text))

    async def close(self) -> None:
        """Flush queued settles and local spend (bounded in time), then close the pool."""
        self._closing = True
        with contextlib.suppress(*LEDGER_ERRORS):
            async with asyncio.timeout(max(5 * self.timeout, 2.0)):
                await self._flush()
        _fail([future for _, _, future in self._reserves], RedisError("the ledger client is closing"))
        self._reserves.clear()
        for task in (self._worker, self._recovery, self._reserver, *self._inflight_batches):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending or self._batch or self._unreconciled:
            self._log(
                "ledger_unflushed",
                settles=len(self._pending),
                local_tokens=self.local_tokens,
                local_dollars=str(from_nanos(self.local_nanos)),
            )
        await self.client.aclose()
        await self.pool.disconnect()

    def _up(self) -> None:
        if not self.available:
            self.available = True
            self._log("ledger_available", url=self._safe_url())
            if self._metrics is not None:
                self._metrics.ledger_available_g.set(1)
        self._wake.set()

    def _lost(self, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.ledger_errors_c.inc()
        if self.available or self._recovery is None:
            self._log(
                "ledger_unavailable",
                url=self._safe_url(),
                error=f"{type(exc).__name__}: {exc}",
                on_unavailable=self.cfg.on_unavailable.value,
            )
        self.available = False
        if self._metrics is not None:
            self._metrics.ledger_available_g.set(0)
        if not self._closing and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.create_task(self._recover(), name="ledger-recovery")

    def _safe_url(self) -> str:
        """The URL without credentials, for logs."""
        url = self.cfg.url
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    # ------------------------------------------------------------------ reserve

    async def reserve(self, rid: str, charge: Charge) -> Hold:
        spans = self._spans()
        for b in self.budgets:  # needs no ledger: the call can never fit
            amount = b.amount(charge)
            if b.limit is not None and amount > b.limit:
                raise too_large(b, amount)
        hold = Hold(rid, charge, spans)
        if not self.available or not self.budgets:
            return self._reserve_locally(hold)
        keys: list[str] = []
        args: list[Any] = [rid, int(self.hold_ttl * 1000), len(self.budgets)]
        for i, (b, span) in enumerate(zip(self.budgets, spans, strict=True)):
            keys += self._keys(i, span.id)
            args += [self._kind(i), -1 if b.limit is None else b.limit, b.amount(charge), self._expire(i, span)]
            args.append(self._bucket_ms(i))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reserves.append((keys, args, future))
        self._reserve_wake.set()
        try:
            reply = await future
        except LEDGER_ERRORS as exc:
            self._lost(exc)
            self._queue(hold, Charge(0, 0))  # it may have landed: release it when the ledger is back
            return self._reserve_locally(hold)
        except asyncio.CancelledError:
            self._queue(hold, Charge(0, 0))
            raise
        code = int(reply[0])
        if code == 0:
            hold.levels = tuple(int(x) for x in reply[1:])
            for b, level in zip(self.budgets, hold.levels, strict=False):
                self._levels[b.name] = level
            return hold
        i = code - 1
        b = self.budgets[i]
        kind, used, held, retry_ms = (int(x) for x in reply[1:5])
        amount = b.amount(charge)
        if kind == 1:
            raise too_large(b, amount)
        if b.window.sliding:
            retry = max(1.0, retry_ms / 1000) if retry_ms > 0 else 1.0
        else:
            retry = calendar_retry(b, used, amount, spans[i], self._wall())
        raise exhausted(b, used, held, amount, retry)

    async def _reserve_loop(self) -> None:
        """Send queued reservations in pipelines of up to ``BATCH``, ``RESERVE_PIPELINES`` at
        once. Every future is resolved within one ledger timeout of its pipeline being sent."""
        while True:
            await self._reserve_wake.wait()
            self._reserve_wake.clear()
            while self._reserves:
                await self._batches.acquire()
                batch = [self._reserves.popleft() for _ in range(min(BATCH, len(self._reserves)))]
                task = asyncio.create_task(self._reserve_batch(batch))
                self._inflight_batches.add(task)
                task.add_done_callback(self._inflight_batches.discard)

    async def _reserve_batch(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            live = [item for item in batch if not item[2].done()]  # a call that gave up meanwhile
            try:
                replies = await self._run("reserve", [(keys, args) for keys, args, _ in live])
            except Exception as exc:  # every waiting call must hear back, whatever went wrong
                _fail([future for _, _, future in live], exc)
                return
            except asyncio.CancelledError:
                _fail([future for _, _, future in live], RedisError("the ledger client is closing"))
                raise
            for (_, _, future), reply in zip(live, replies, strict=True):
                if not future.done():
                    future.set_result(reply)
        finally:
            self._batches.release()

    async def _run(self, script: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args) in one pipeline round trip, within the ledger
        timeout. A server that lost its script cache (restarted) gets the scripts again and the
        batch once more: a reserve or settle run twice is harmless (both are idempotent)."""
        for attempt in (1, 2):
            async with asyncio.timeout(self.timeout), self.client.pipeline(transaction=False) as pipe:
                sha = self._shas.get(script)
                if sha is None:
                    raise NoScriptError("scripts not loaded yet")
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return replies
            if attempt == 1 and all(isinstance(e, NoScriptError) for e in errors):
                async with asyncio.timeout(self.timeout):
                    await self._load_scripts()
                continue
            raise errors[0]
        raise AssertionError("unreachable")

    def _reserve_locally(self, hold: Hold) -> Hold:
        if not self.budgets:
            return hold
        if self.cfg.on_unavailable is OnLedgerUnavailable.FAIL_CLOSED or self.cfg.local_allowance is None:
            raise unavailable(
                "the shared budget ledger cannot be reached and the policy says fail closed "
                "(ledger.onUnavailable FailClosed); no call is admitted until it answers again"
            )
        allowance = self.cfg.local_allowance
        charge = hold.charge
        if allowance.tokens is not None and self.local_tokens + charge.tokens > allowance.tokens:
            raise unavailable(
                f"the shared budget ledger cannot be reached and this replica's local allowance of "
                f"{allowance.tokens} tokens is spent ({self.local_tokens} held or used); retry shortly"
            )
        if allowance.dollars is not None and self.local_nanos + charge.nanos > to_nanos(Decimal(allowance.dollars)):
            raise unavailable(
                f"the shared budget ledger cannot be reached and this replica's local allowance of "
                f"${allowance.dollars} is spent (${from_nanos(self.local_nanos):.6f} held or spent); retry shortly"
            )
        self.local_tokens += charge.tokens
        self.local_nanos += charge.nanos
        hold.local = True
        if self._metrics is not None:
            self._metrics.ledger_local_c.inc()
        return hold

    # ------------------------------------------------------------------ settle

    def settle(self, hold: Hold, used: Charge) -> None:
        if hold.settled:
            return
        hold.settled = True
        if not self.budgets:
            return
        if hold.local:
            self.local_tokens += used.tokens - hold.charge.tokens
            self.local_nanos += used.nanos - hold.charge.nanos
            for i, (b, span) in enumerate(zip(self.budgets, hold.spans, strict=True)):
                units = b.amount(used)
                if units > 0:
                    key = (i, span.id)
                    self._unreconciled[key] = self._unreconciled.get(key, 0) + units
            c = self._unreconciled_charge
            self._unreconciled_charge = Charge(c.tokens + used.tokens, c.nanos + used.nanos)
            self._wake.set()
            return
        self._queue(hold, used)

    def _queue(self, hold: Hold, used: Charge) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(_Pending(hold, used, time.monotonic() + self.hold_ttl))
        self._wake.set()

    async def _settler(self) -> None:
        """Sends queued settles (and local spend) while the ledger is available."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.available:
                continue
            try:
                async with asyncio.timeout(self.timeout * 4):
                    await self._flush()
            except LEDGER_ERRORS as exc:
                self._lost(exc)

    async def _flush(self) -> None:
        """Send every queued settle, then the local spend. Raises a ledger error (the settles
        that failed stay queued; re-sending one is harmless)."""
        while self._pending:
            now = time.monotonic()
            batch: list[_Pending] = []
            while self._pending and len(batch) < BATCH:
                p = self._pending.popleft()
                if p.until < now:  # expired and charged in full on the server: nothing to settle
                    self.dropped += 1
                    continue
                batch.append(p)
            if not batch:
                continue
            try:
                await self._run("settle", [self._settle_args(p.hold, p.used) for p in batch])
            except BaseException:
                self._pending.extendleft(reversed(batch))
                raise
        await self._reconcile()

    def _settle_args(self, hold: Hold, used: Charge) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [hold.rid, len(self.budgets)]
        for i, (b, span) in enumerate(zip(self.budgets, hold.spans, strict=True)):
            keys += self._keys(i, span.id)
            args += [self._kind(i), b.amount(used), self._expire(i, span), self._bucket_ms(i)]
        return keys, args

    async def _reconcile(self) -> None:
        """Charge the spend made on the local allowance, once (the batch id survives retries),
        then give the allowance back."""
        if self._batch is None and self._unreconciled:
            self._batch = (uuid.uuid4().hex, self._unreconciled, self._unreconciled_charge)
            self._unreconciled, self._unreconciled_charge = {}, Charge(0, 0)
        if self._batch is None:
            return
        batch_id, entries, total = self._batch
        keys: list[str] = []
        args: list[Any] = [len(entries)]
        now = self._wall()
        for (i, span_id), units in entries.items():
            keys += self._keys(i, span_id)
            window = self.budgets[i].window
            span = window.span(now) if window.sliding else _span_of(span_id)
            args += [self._kind(i), units, self._expire(i, span), self._bucket_ms(i)]
        keys.append(f"{self.cfg.key_prefix}:reconciled:{batch_id}")
        async with asyncio.timeout(self.timeout):
            await self._charge(keys=keys, args=args)
        self._batch = None
        self.local_tokens -= total.tokens
        self.local_nanos -= total.nanos
        self._log("ledger_reconciled", batch=batch_id, tokens=total.tokens, dollars=str(from_nanos(total.nanos)))

    async def _recover(self) -> None:
        """Probe until the server answers, flush, then use the ledger again."""
        delay = 0.05
        while not self._closing:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._load_scripts()
                async with asyncio.timeout(self.timeout * 8):
                    await self._flush()
            except LEDGER_ERRORS:
                if self._metrics is not None:
                    self._metrics.ledger_errors_c.inc()
                continue
            self._up()
            return

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict[str, object]:
        return {
            "ledger": "redis",
            "available": self.available,
            "pending_settles": len(self._pending),
            "local_tokens": self.local_tokens,
            "local_dollars": str(from_nanos(self.local_nanos)),
            "levels": {
                b.name: b.value(self._levels[b.name]) for b in self.budgets if b.name in self._levels
            },  # used + reserved at this guard's last reservation
        }

    async def status(self) -> dict[str, dict[str, object]]:
        """Each budget as the ledger has it now (expired holds charged first)."""
        spans = self._spans()
        keys: list[str] = []
        args: list[Any] = [len(self.budgets)]
        for i, span in enumerate(spans):
            keys += self._keys(i, span.id)
            args += [self._kind(i), self._bucket_ms(i)]
        async with asyncio.timeout(self.timeout):
            reply = await self._status(keys=keys, args=args)
        out: dict[str, dict[str, object]] = {}
        for i, (b, span) in enumerate(zip(self.budgets, spans, strict=True)):
            used, held, holds, expired, reconciled = (int(x) for x in reply[5 * i : 5 * i + 5])
            out[b.name] = {
                "scope": b.scope,
                "unit": b.unit.value,
                "limit": b.limit,
                "used": used,
                "held": held,
                "holds": holds,
                "expired": expired,
                "reconciled": reconciled,
                "resets": None if b.window.sliding else span.end,
            }
        return out


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _span_of(span_id: str) -> Span:
    """A calendar window from its id: only its end matters here (for the keys' expiry), and a
    window is at most 31 days long."""
    start = float(span_id[1:])
    return Span(span_id, start, start + 32 * 86400)
