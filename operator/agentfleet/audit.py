"""The hash-chained audit trail, and ``agentfleet audit verify``.

Every decision (LLM call, tool call, rejection, breaker change, injection flag) becomes one JSON
line. Each line carries ``seq``, ``prev`` (the previous line's ``hash``) and its own ``hash``
(SHA-256 of the line's canonical JSON without ``hash``), so editing a line breaks its own hash,
and deleting, inserting or reordering lines breaks the ``prev`` links. Without a signing key
this is tamper-*evident* against after-the-fact edits, not proof against someone who rewrites
the whole file; ship it off the node (stdout is collected by the cluster's log pipeline) for
that. Deleting only the newest lines cannot be seen from the file alone.

Prompts and completions are redacted by default to ``{"sha256", "length"}``: enough to prove
what was sent without keeping it; ``capture_content`` opts into full text.

Writing never blocks the event loop: records go through a bounded queue to a writer thread
(woken every 50 ms, so a busy guard writes in batches), which assigns ``seq``/``prev``/``hash``
in order, writes stdout and/or the file, and rotates the file. If the queue overflows (a stalled
disk or pipe), records are dropped and the writer chains an ``audit_gap`` record saying how
many, so the chain stays verifiable and the loss is explicit rather than silent.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentfleet.api.guardconfig import AuditSink

GENESIS = "0" * 64
"""``prev`` of the first record of a chain."""


def canonical(record: dict[str, Any]) -> str:
    """The serialization that is hashed and written: sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of a record without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def digest(data: bytes | str) -> dict[str, Any]:
    """Redacted content: its SHA-256 and length."""
    raw = data.encode() if isinstance(data, str) else data
    return {"sha256": hashlib.sha256(raw).hexdigest(), "length": len(raw)}


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of an existing audit file, to continue its chain after a restart."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            block, data = 65536, b""
            pos = end
            while pos > 0:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
                lines = data.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    last = lines[-1]
                    break
            else:
                return None
    except OSError:
        return None
    try:
        rec = json.loads(last)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and "hash" in rec and "seq" in rec else None


class _RotatingFile:
    """Append-only file rotated to FILE.1 … FILE.N when it grows past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] = path.open("ab")
        self._size = self._fh.tell()

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._fh.write(line)
        self._size += len(line)

    def _rotate(self) -> None:
        self._fh.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fh = self.path.open("ab")
        self._size = 0

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class AuditLog:
    """Hash-chained JSON-lines audit trail with a non-blocking ``record``."""

    FLUSH_INTERVAL = 0.05
    """Seconds between writer passes: records are batched instead of waking a thread per record."""

    def __init__(
        self,
        sink: AuditSink,
        identity: dict[str, str],
        *,
        capture_content: bool = False,
        queue_size: int = 100_000,
        stream: IO[str] | None = None,
    ) -> None:
        self.identity = identity
        self.capture_content = capture_content
        self._stream = (stream or sys.stdout) if sink.stdout else None
        self._file = _RotatingFile(Path(sink.file), sink.max_bytes, sink.backups) if sink.file else None
        self._pending: deque[dict[str, Any]] = deque()
        self._limit = queue_size
        self._recorded = 0
        self._written = 0
        self._dropped = 0
        self._gap_seen = 0
        self._stop = threading.Event()
        self.seq = 0
        self.prev = GENESIS
        if sink.file:
            last = _last_record(Path(sink.file))
            if last is not None:
                self.seq, self.prev = int(last["seq"]) + 1, str(last["hash"])
        self._thread: threading.Thread | None = None
        self.enabled = self._stream is not None or self._file is not None

    def start(self) -> None:
        """Start the writer thread."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def content(self, data: Any) -> dict[str, Any]:
        """Prompt/completion for a record: redacted unless content capture is on."""
        if self.capture_content:
            return {"content": data}
        if isinstance(data, bytes | str):
            return digest(data)
        return digest(canonical(data) if isinstance(data, dict) else json.dumps(data, ensure_ascii=False))

    def record(self, kind: str, **fields: Any) -> None:
        """Queue one record (never blocks; drops and counts when the writer is behind)."""
        if not self.enabled:
            return
        self._recorded += 1  # counters written by one thread each: no lock needed
        if len(self._pending) >= self._limit:
            self._dropped += 1
            return
        fields["kind"] = kind
        fields["ts"] = time.time()
        self._pending.append(fields)  # deque.append/popleft are thread-safe

    @property
    def dropped(self) -> int:
        """Records dropped so far because the queue was full."""
        return self._dropped

    @property
    def caught_up(self) -> bool:
        """Every record queued so far has been written (or counted as dropped)."""
        return self._written + self._dropped == self._recorded

    def _seal(self, fields: dict[str, Any]) -> bytes:
        ts = fields.pop("ts", None)
        rec = {k: v for k, v in fields.items() if v is not None}
        rec.update(self.identity)
        rec["ts"] = datetime.fromtimestamp(ts if isinstance(ts, float) else time.time(), UTC).isoformat(
            timespec="milliseconds"
        )
        rec["seq"], rec["prev"] = self.seq, self.prev
        body = canonical(rec)
        h = hashlib.sha256(body.encode()).hexdigest()
        self.seq, self.prev = self.seq + 1, h
        # The hash goes last; verify re-serializes the record without it, so the line itself
        # need not be in canonical key order.
        return (body[:-1] + ',"hash":"' + h + '"}\n').encode()

    def _write_pending(self) -> None:
        lines: list[bytes] = []
        dropped = self._dropped
        if dropped > self._gap_seen:
            lines.append(
                self._seal(
                    {
                        "kind": "audit_gap",
                        "dropped": dropped - self._gap_seen,
                        "decision": "error",
                        "reason": "audit queue overflow",
                    }
                )
            )
            self._gap_seen = dropped
        pending = self._pending
        taken = 0
        while pending:
            lines.append(self._seal(pending.popleft()))
            taken += 1
        if not lines:
            return
        try:
            if self._stream is not None:
                try:
                    self._stream.write(b"".join(lines).decode())
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
            if self._file is not None:
                for line in lines:
                    self._file.write(line)
                self._file.flush()
        finally:
            self._written += taken

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.FLUSH_INTERVAL)
            try:
                self._write_pending()
            except OSError as exc:
                print(f"agentfleet guard: audit write failed: {exc}", file=sys.stderr)
            if stopping:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer (blocking; call from a thread)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout)
            self._thread = None
        if self._file is not None:
            self._file.close()


# ---------------------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of verifying one or more files that form one chain (oldest first)."""

    ok: bool
    records: int
    message: str


def _lines(paths: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for path in paths:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                yield path, lineno, line


def verify(paths: list[Path]) -> VerifyResult:
    """Check each record's own hash and its link to the record before it."""
    count, restarts = 0, 0
    first_seq: int | None = None
    last_seq, last_hash = -1, GENESIS
    for path, lineno, raw in _lines(paths):
        where = f"{path}:{lineno}"
        if not raw.strip():
            return VerifyResult(False, count, f"{where}: empty line (a record was removed or truncated)")
        try:
            rec = json.loads(raw)
        except ValueError:
            return VerifyResult(False, count, f"{where}: not valid JSON (the record was edited or truncated)")
        if not isinstance(rec, dict) or not {"seq", "prev", "hash"} <= rec.keys():
            return VerifyResult(False, count, f"{where}: not an audit record (no seq/prev/hash)")
        seq, label = rec["seq"], f"{where} (seq {rec['seq']})"
        if not isinstance(seq, int):
            return VerifyResult(False, count, f"{label}: seq is not an integer (edited)")
        if record_hash(rec) != rec["hash"]:
            return VerifyResult(False, count, f"{label}: content does not match its hash (the record was edited)")
        if count == 0:
            first_seq = seq
            if seq == 0 and rec["prev"] != GENESIS:
                return VerifyResult(False, count, f"{label}: first record of a chain must have prev={GENESIS[:8]}…")
        elif seq == 0 and rec["prev"] == GENESIS:
            restarts += 1  # a new chain: the guard restarted writing to a stream
        elif rec["prev"] != last_hash:
            if seq > last_seq + 1:
                why = f"records deleted: expected seq {last_seq + 1} after seq {last_seq}, found seq {seq}"
            elif seq <= last_seq:
                why = f"out of order: seq {seq} follows seq {last_seq} (records reordered or duplicated)"
            else:
                why = "prev does not match the hash of the record before it (a record was replaced)"
            return VerifyResult(False, count, f"{label}: {why}")
        elif seq != last_seq + 1:
            return VerifyResult(False, count, f"{label}: seq {seq} does not follow seq {last_seq} (edited)")
        last_seq, last_hash = seq, rec["hash"]
        count += 1
    if count == 0:
        return VerifyResult(False, 0, "no records found")
    notes = []
    if first_seq:
        notes.append(f"starts at seq {first_seq}: earlier records are in rotated files (pass them first to check)")
    if restarts:
        notes.append(f"{restarts} chain restart(s)")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return VerifyResult(True, count, f"{count} records, seq {first_seq}..{last_seq}, chain intact{extra}")


USAGE = """usage: agentfleet audit verify FILE [FILE...]

Verify the hash chain of a guard audit trail. With rotated files, pass them oldest first
(e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl). Exit 0 if intact, 1 if broken (naming the
first broken record), 2 on usage errors."""


def main(argv: list[str]) -> int:
    """``agentfleet audit verify FILE...``."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    if argv[0] != "verify" or len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    paths = [Path(p) for p in argv[1:]]
    for p in paths:
        if not p.is_file():
            print(f"agentfleet audit verify: {p}: no such file", file=sys.stderr)
            return 2
    result = verify(paths)
    if result.ok:
        print(f"OK: {result.message}")
        return 0
    print(f"BROKEN: {result.message}", file=sys.stderr)
    return 1
