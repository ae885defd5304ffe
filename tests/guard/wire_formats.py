"""The OpenAI Responses and Anthropic Messages wire formats, as a real upstream writes them.

Builders of response objects and of the typed server-sent-event sequences each API streams
(every event with its ``event:`` line, ``type`` and, for Responses, ``sequence_number``), for the
scripted upstream to replay byte for byte. The shapes follow the APIs' references; the official
SDKs parse them in the tests, so a shape they would reject fails the test.
"""

from __future__ import annotations

import json
from typing import Any


def typed(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **data}).encode() + b"\n\n"


# ------------------------------------------------------------------------------ OpenAI Responses


def usage(tin: int = 10, tout: int = 5, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": tin,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": tout,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": tin + tout,
    }


def message(text: str, mid: str = "msg_1") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"type": "message", "id": mid, "role": "assistant", "status": "completed", "content": [part]}


def function_call(name: str, args: str = "{}", call_id: str = "call_1", fid: str = "fc_1") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": fid,
        "call_id": call_id,
        "name": name,
        "arguments": args,
        "status": "completed",
    }


def response(output: list[dict[str, Any]], rid: str = "resp_1", use: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": "gpt-test",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": use or usage(),
    }


class ResponsesStream:
    """The events of one streamed response, numbered as the API numbers them."""

    def __init__(self, rid: str = "resp_1") -> None:
        self.rid = rid
        self.seq = 0
        self.events: list[bytes] = []
        self.output: list[dict[str, Any]] = []

    def ev(self, kind: str, **data: Any) -> ResponsesStream:
        self.events.append(typed(kind, {**data, "sequence_number": self.seq}))
        self.seq += 1
        return self

    def created(self) -> ResponsesStream:
        shell = {**response([], self.rid), "status": "in_progress", "usage": None}
        return self.ev("response.created", response=shell).ev("response.in_progress", response=shell)

    def text(self, text: str, mid: str = "msg_1") -> ResponsesStream:
        idx = len(self.output)
        item = message(text, mid)
        self.ev("response.output_item.added", output_index=idx, item={**item, "status": "in_progress", "content": []})
        part = {"type": "output_text", "text": "", "annotations": []}
        self.ev("response.content_part.added", item_id=mid, output_index=idx, content_index=0, part=part)
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            self.ev(
                "response.output_text.delta", item_id=mid, output_index=idx, content_index=0, delta=piece, logprobs=[]
            )
        self.ev("response.output_text.done", item_id=mid, output_index=idx, content_index=0, text=text, logprobs=[])
        self.ev("response.content_part.done", item_id=mid, output_index=idx, content_index=0, part=item["content"][0])
        self.ev("response.output_item.done", output_index=idx, item=item)
        self.output.append(item)
        return self

    def call(self, name: str, args: str, call_id: str = "call_1", fid: str = "fc_1") -> ResponsesStream:
        idx = len(self.output)
        item = function_call(name, args, call_id, fid)
        self.ev("response.output_item.added", output_index=idx, item={**item, "arguments": "", "status": "in_progress"})
        for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
            self.ev("response.function_call_arguments.delta", item_id=fid, output_index=idx, delta=piece)
        self.ev("response.function_call_arguments.done", item_id=fid, output_index=idx, arguments=args, name=name)
        self.ev("response.output_item.done", output_index=idx, item=item)
        self.output.append(item)
        return self

    def completed(self, use: dict[str, Any] | None = None) -> list[bytes]:
        self.ev("response.completed", response=response(self.output, self.rid, use))
        return self.events


# ------------------------------------------------------------------------------ Anthropic Messages


def a_usage(tin: int = 10, tout: int = 5, write: int = 0, read: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": tin,
        "output_tokens": tout,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }


def a_text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def a_tool_use(name: str, tool_input: dict[str, Any], tid: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": name, "input": tool_input}


def a_message(content: list[dict[str, Any]], use: dict[str, Any] | None = None, mid: str = "msg_1") -> dict[str, Any]:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": use or a_usage(),
    }


def a_stream(content: list[dict[str, Any]], use: dict[str, Any] | None = None) -> list[bytes]:
    """A streamed message: start (input usage), each block (text in two deltas, tool input in
    two JSON fragments), the delta with the stop reason and output usage, the stop; a ping too."""
    use = use or a_usage()
    start_usage = {**use, "output_tokens": 1}
    shell = {**a_message([], start_usage), "content": [], "stop_reason": None}
    events = [typed("message_start", {"message": shell}), typed("ping", {})]
    for i, block in enumerate(content):
        if block["type"] == "text":
            events.append(typed("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}))
            text = block["text"]
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                events.append(
                    typed("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": piece}})
                )
        else:
            events.append(typed("content_block_start", {"index": i, "content_block": {**block, "input": {}}}))
            raw = json.dumps(block["input"])
            for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                events.append(
                    typed(
                        "content_block_delta",
                        {"index": i, "delta": {"type": "input_json_delta", "partial_json": piece}},
                    )
                )
        events.append(typed("content_block_stop", {"index": i}))
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    events.append(
        typed(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": use["output_tokens"]}},
        )
    )
    events.append(typed("message_stop", {}))
    return events
