"""Server-sent events, parsed and written per the spec (WHATWG HTML, "event stream
interpretation"), with bounded memory.

An event is a block of ``field: value`` lines ended by a blank line; lines end in CRLF, LF or CR;
several ``data:`` lines in one event are joined with newlines; a line starting with ``:`` is a
comment; a leading byte-order mark is ignored; an event the stream ends without completing is
dropped. Re-emitting an event means writing each of its data lines as its own ``data:`` line
(an embedded newline after a single ``data:`` would end the field early and break the event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream is not a usable event stream (a line or an event beyond the size bound)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its data (lines joined by newlines) and its type."""

    data: bytes
    type: bytes = b"message"
    id: bytes | None = field(default=None, compare=False)
    """The event's ``id`` field, if it had one (a relay that supports resumption re-emits it;
    not part of equality, which is about what the event says)."""
    retry: bytes | None = field(default=None, compare=False)
    """A ``retry`` field seen since the previous event (likewise)."""


class SSEParser:
    """Incremental parser: ``feed`` bytes as they arrive, get the events they complete."""

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._searched = 0
        """Bytes at the start of ``_buf`` known to hold no line end (no quadratic re-scan)."""
        self._data: list[bytes] = []
        self._size = 0
        self._type = b""
        self._id: bytes | None = None
        self._retry: bytes | None = None
        self._started = False
        self._error: SSEError | None = None
        """A bound was broken after events that were still returned: raised on the next feed."""

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by ``chunk`` (raises ``SSEError`` beyond the size bound, once the
        events before the offending one have been returned)."""
        self.check()
        buf = self._buf
        buf += chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            self._started = True
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
        events: list[Event] = []
        pos = 0
        while True:
            m = _EOL.search(buf, max(pos, self._searched))
            if m is None or (m.group() == b"\r" and m.end() == len(buf)):
                break  # a CR at the very end may be the first half of a CRLF
            try:
                event = self._line(bytes(buf[pos : m.start()]))
            except SSEError as exc:
                if not events:
                    raise
                self._error = exc
                return events
            if event is not None:
                events.append(event)
            pos = m.end()
            self._searched = 0
        del buf[:pos]
        self._searched = max(0, len(buf) - 1)
        if len(buf) > self.max_event_bytes:
            err = SSEError(f"a server-sent-event line exceeds {self.max_event_bytes} bytes")
            if not events:
                raise err
            self._error = err
        return events

    def check(self) -> None:
        """Raise the error deferred by the last ``feed``, if any."""
        if self._error is not None:
            raise self._error

    def _line(self, line: bytes) -> Event | None:
        if not line:
            if not self._data:
                self._type = b""
                return None
            event = Event(b"\n".join(self._data), self._type or b"message", self._id, self._retry)
            self._data, self._size, self._type, self._id, self._retry = [], 0, b"", None, None
            return event
        if line.startswith(b":"):
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self.max_event_bytes:
                raise SSEError(f"a server-sent event exceeds {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == b"event":
            self._type = value
        elif name == b"id" and b"\0" not in value:
            self._id = value[:1024]
        elif name == b"retry" and value.isdigit():
            self._retry = value[:16]
        # Unknown fields are ignored (the spec).
        return None


def encode(data: bytes) -> bytes:
    """One event carrying ``data`` (each of its lines a ``data:`` line)."""
    if b"\n" not in data and b"\r" not in data:
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in _EOL.split(data)) + b"\n"
