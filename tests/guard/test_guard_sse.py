"""Server-sent events per the spec (pure): line ends, multi-line data, chunk boundaries, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfleet.guard.sse import Event, SSEError, SSEParser, encode

pytestmark = pytest.mark.unit


def parse(*chunks: bytes, limit: int = 1 << 20) -> list[Event]:
    parser = SSEParser(limit)
    return [e for c in chunks for e in parser.feed(c)]


def test_the_spec_examples() -> None:
    stream = (
        b"\xef\xbb\xbf: a comment\r\n\r\n"
        b"data: first\r\ndata:second\r\n\r\n"
        b'event: error\rdata: {"x": 1}\r\r'
        b"id: 7\nretry: 10\nunknown: field\ndata\n\n"
        b"data: no blank line at the end"
    )
    assert parse(stream) == [
        Event(b"first\nsecond"),
        Event(b'{"x": 1}', b"error"),
        Event(b""),
    ]


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    stream = b"data: a\r\ndata: b\r\n\r\nevent: e\rdata: c\r\rdata: d\n\n" * 3
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert parse(*chunks) == parse(stream) == [Event(b"a\nb"), Event(b"c", b"e"), Event(b"d")] * 3


@given(st.binary().filter(lambda b: b"\r" not in b))
def test_encode_round_trips(data: bytes) -> None:
    assert parse(encode(data)) == [Event(data)]


def test_bounds() -> None:
    with pytest.raises(SSEError, match="line"):
        parse(b"data: " + b"x" * 200, limit=100)
    with pytest.raises(SSEError, match="event"):
        parse(b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n", limit=100)
    # A long line fed a byte at a time is scanned once, not once per byte (no quadratic work).
    parser = SSEParser(1 << 20)
    for _ in range(100_000):
        parser.feed(b"x")
    assert parser.feed(b"\n\n") == []
