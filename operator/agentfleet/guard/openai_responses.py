"""The OpenAI Responses adapter: ``POST /v1/responses`` (streamed or not), on the control core.

The same order of enforcement as chat completions (task, new tool outputs, tools offered,
budget reservation, upstream, then the answer's tool calls judged before the agent sees them),
with what is particular to the Responses API:

- **chains are one task.** A request that continues ``previous_response_id`` or a
  ``conversation`` carries only the new input; the earlier turns are upstream. The guard
  remembers which task every response it relayed belongs to (``ChainTable``, bounded), so the
  continuation counts against the same iterations, tool calls, loop signatures and duration,
  and a task a loop ended stays ended along its chain. Without a task header, a chain's task is
  named after its first response (``response:<id>``) or its conversation
  (``conversation:<id>``); a first request without a chain is judged from its input list, as a
  chat conversation is, and its counters carry over into its chain.
- **the reservation counts the chain's context**: the last response of a chain reported how
  many tokens it read and wrote; the next call reads at least that much again.
- **hosted tools** run at the upstream: a disallowed one is removed from ``tools`` (a forced one
  refused), and ``max_tool_calls`` is lowered to what the task has left, so the upstream stops
  there; the hosted calls in the answer are still judged (counted, loop-checked).
- ``background: true`` is refused: its usage arrives after the call, where it cannot be settled.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from agentfleet.api.types import Provider
from agentfleet.guard import core
from agentfleet.guard import responses_wire as wire
from agentfleet.guard.config import TASK_HEADER
from agentfleet.guard.core import CallLog
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import answer_list, error_response, passed_through, read_json
from agentfleet.guard.responses_stream import ResponsesRelay
from agentfleet.guard.shapes import Usage
from agentfleet.guard.state import Guard
from agentfleet.guard.streaming import relay_events
from agentfleet.guard.tasks import Task

MAX_CHAINS = 100_000
"""Response and conversation ids remembered (least recently used forgotten first)."""


@dataclass(slots=True)
class Link:
    """The task a response or conversation belongs to, and the context it left (tokens)."""

    task: str
    context: int = 0


class ChainTable:
    """Response id / conversation id -> its task, bounded (LRU). A forgotten id starts a new task
    named after it: the guard never merges two tasks, it may only split one after a restart."""

    def __init__(self, limit: int = MAX_CHAINS) -> None:
        self.limit = limit
        self._links: OrderedDict[str, Link] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def get(self, key: str) -> Link | None:
        link = self._links.get(key)
        if link is not None:
            self._links.move_to_end(key)
        return link

    def put(self, key: str, link: Link) -> None:
        self._links[key] = link
        self._links.move_to_end(key)
        while len(self._links) > self.limit:
            self._links.popitem(last=False)

    def resolve(self, header: str | None, conversation: str | None, previous: str | None) -> tuple[str | None, int]:
        """The task key of a request (header first, then its chain; None: its input is the task)
        and the context its chain already holds."""
        link = None
        if conversation is not None:
            link = self.get(f"conversation:{conversation}")
        if link is None and previous is not None:
            link = self.get(previous)
        context = link.context if link is not None else 0
        if header:
            return header, context
        if link is not None:
            return link.task, context
        if conversation is not None:
            return f"conversation:{conversation}", context
        if previous is not None:
            return f"response:{previous}", context
        return None, context


def adopt(guard: Guard, key: str, unnamed: Task) -> Task:
    """The named task ``key`` continuing an unnamed one (its counters carried over)."""
    task, created = guard.tasks.get(key)
    if created:
        task.iterations = unnamed.iterations + 1  # the unnamed task did not count the call that named it
        task.tool_calls = unnamed.tool_calls
        task.per_tool = dict(unnamed.per_tool)
        task.calls = dict(unnamed.calls)
        task.errors = dict(unnamed.errors)
        task.ended = unnamed.ended
        task.started = unnamed.started
        task.issued_ids = unnamed.issued_ids.copy()
    return task


class Responses:
    """The ``/v1/responses`` handler of one guard, with its chain table."""

    def __init__(self, guard: Guard) -> None:
        self.chains = ChainTable(max(guard.tuning.max_tasks * 10, 1000))

    async def create(self, guard: Guard, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses``."""
        call = CallLog(guard, "llm_call", "openai-responses")
        try:
            with guard.slot():
                return await self._create(guard, request, call)
        except GuardError as err:
            call.fail(err)
            return error_response(err)
        finally:
            call.finish()

    def _remember(
        self,
        guard: Guard,
        call: CallLog,
        response_id: str | None,
        conversation: str | None,
        context: int,
        stored: bool,
    ) -> None:
        """Link a response (and its conversation) to the call's task."""
        task = call.task
        if task is None or not response_id:
            return
        if not task.named and not stored:
            return  # a response not stored upstream cannot be continued: no chain, no task to keep
        if not task.named:
            # The first response of a chain names its task; its counters carry over.
            key = f"response:{response_id}"
            adopt(guard, key, task)
        else:
            key = task.id
        self.chains.put(response_id, Link(key, context))
        if conversation is not None:
            self.chains.put(f"conversation:{conversation}", Link(key, context))

    async def _create(self, guard: Guard, request: web.Request, call: CallLog) -> web.StreamResponse:
        if guard.cfg.model.provider is Provider.ANTHROPIC:
            raise GuardError(
                Code.INVALID_REQUEST,
                "this agent's model is served by Anthropic, which does not speak the Responses API; "
                "use the Messages API (ANTHROPIC_BASE_URL)",
                404,
            )
        raw, payload = await read_json(request)
        conversation, previous = wire.chain_of(payload)
        key, context = self.chains.resolve(request.headers.get(TASK_HEADER), conversation, previous)
        turn = wire.responses_turn(payload, key, max_items=guard.tuning.max_messages, max_tools=guard.tuning.max_tools)
        scans = await core.scan_turn(guard, turn)
        keep = core.open_turn(guard, call, turn, scans)
        task = call.task
        assert task is not None
        call.removed = wire.apply_tool_filter(payload, keep)
        payload["model"] = guard.model
        if wire.has_hosted_tools(payload):
            left = guard.limits.max_tool_calls - task.tool_calls
            if left >= 1:
                asked = payload.get("max_tool_calls")
                valid = isinstance(asked, int) and not isinstance(asked, bool) and asked > 0
                payload["max_tool_calls"] = min(int(asked or 0), left) if valid else left
            else:  # the task has no tool call left: the upstream must not run one it would be refused
                call.removed += wire.drop_hosted_tools(payload)
        stream = call.stream = payload.get("stream") is True
        stored = payload.get("store") is not False
        prompt_tokens = wire.estimate_prompt_tokens(payload) + context
        completion_tokens = wire.completion_cap(payload, guard.tuning.default_completion_tokens)
        await core.commit_turn(guard, call, prompt_tokens, completion_tokens)
        call.prompt = guard.audit.content(payload.get("input") if guard.audit.capture_content else raw)
        body = json.dumps(payload).encode()
        deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
        call.upstream = True
        if stream:
            start = await guard.upstream.open_stream("/responses", body, deadline)
            ids: list[str] = []
            relay = ResponsesRelay(guard, task, ids.append, held_limit=guard.tuning.max_response_bytes)
            try:
                return await relay_events(
                    guard, request, call, start, relay, deadline=deadline, prompt_tokens=prompt_tokens
                )
            finally:
                if ids:
                    used = wire.context_tokens(relay.usage()) or context
                    self._remember(guard, call, ids[-1], conversation, used, stored)

        reply = await guard.upstream.call("/responses", body, deadline)
        if (passed := passed_through(call, reply)) is not None:
            return passed
        data = reply.data
        output = answer_list(guard, data, "output", "response")
        call.answered(data)
        answer = wire.answer(output)
        usage: Usage | None = wire.usage_of(data.get("usage"))
        call.used(usage, prompt_tokens, answer.out_chars)
        rid = data.get("id")
        call.completion = guard.audit.content(output if guard.audit.capture_content else reply.body)
        try:
            calls = answer.fresh(task.was_issued)
            refusal = core.judge_calls(guard, task, calls) if calls else None
        finally:  # after the judgement, so a refused chain stays refused (and its calls are counted)
            rid = rid if isinstance(rid, str) else None
            self._remember(guard, call, rid, conversation, wire.context_tokens(usage), stored)
        if refusal is not None:
            raise refusal
        call.ok()
        return web.Response(body=reply.body, content_type="application/json")
