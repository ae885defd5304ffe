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

import asyncio
import contextlib
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
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


def _drop_partial_tail(path: Path) -> int:
    """Cut off a last line left without its newline (a crash mid-write): it was never a
    record, and appending after it would fuse it with the next one. Returns the bytes dropped."""
    try:
        with path.open("r+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return 0
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return 0
            pos = end
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                block = fh.read(step)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    pos += cut + 1
                    break
            fh.truncate(pos)
            return end - pos
    except OSError:
        return 0


def head_path(path: Path) -> Path:
    """Where the guard publishes the chain head of audit file ``path`` (``audit.head.json`` for
    ``audit.jsonl``: outside the rotated set ``audit.jsonl.N``)."""
    return path.with_name(f"{path.name.split('.', 1)[0] or path.name}.head.json")


def chain_head(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the last complete record of an audit file: the chain head an operator
    publishes and later passes to ``verify`` as an anchor."""
    last = _last_record(path)
    if last is None or not isinstance(last.get("seq"), int):
        return None
    return int(last["seq"]), str(last["hash"])


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

    def sync(self) -> None:
        """Flush and fsync: the records survive a crash of the process or the node."""
        self.flush()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.fsync(self._fh.fileno())

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
        self._head: tuple[int, str] | None = None
        self._sealed: tuple[int, str] | None = None
        self.head_file = head_path(Path(sink.file)) if sink.file else None
        dropped_tail = 0
        if sink.file:
            dropped_tail = _drop_partial_tail(Path(sink.file))
            last = _last_record(Path(sink.file))
            if last is not None:
                self.seq, self.prev = int(last["seq"]) + 1, str(last["hash"])
                self._head = (int(last["seq"]), str(last["hash"]))
        self._thread: threading.Thread | None = None
        self.enabled = self._stream is not None or self._file is not None
        if sink.file and dropped_tail:
            self.record(
                "audit_repair",
                decision="error",
                reason="the file ended in a partial record (a crash mid-write); it was cut off",
                dropped_bytes=dropped_tail,
            )

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

    async def flushed(self, within: float = 5.0) -> bool:
        """Wait until every record queued so far is written (and the file synced to disk): what
        must survive a crash -- the intent of an action -- is recorded before the action. False
        if the writer did not catch up in time (it is then written late, never lost silently:
        the drop counter says otherwise)."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + within
        while not self.caught_up:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        if self._file is not None:
            await asyncio.to_thread(self._file.sync)
        return True

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
        self._sealed = (self.seq, h)
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
            self._head = self._sealed  # published only once written: an anchor is never ahead of the trail
            self._publish_head()
        finally:
            self._written += taken

    @property
    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the newest record written: the chain head to publish as an anchor."""
        return self._head  # one tuple, replaced whole by the writer: never torn

    def _publish_head(self) -> None:
        """Write the head next to the file (atomically), for whoever ships anchors off the node."""
        head = self._head
        if head is None or self.head_file is None:
            return
        tmp = self.head_file.with_name(self.head_file.name + ".tmp")
        with contextlib.suppress(OSError):  # the trail itself was written; the head is a convenience
            tmp.write_text(json.dumps({"seq": head[0], "hash": head[1]}) + "\n")
            tmp.replace(self.head_file)

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


ANCHOR_HASH_PART_HEX = 12
"""A published head's hash travels as two 48-bit numbers (12 hex digits each, exact in a float64
Prometheus sample), so the head is two gauges with fixed labels: no series per hash."""
MIN_ANCHOR_HEX = 2 * ANCHOR_HASH_PART_HEX
"""The shortest hash prefix an anchor may give: 96 bits, beyond any second-preimage search."""


def hash_parts(digest_hex: str) -> tuple[int, int]:
    """The first 96 bits of a record hash as the two numbers a guard publishes."""
    n = ANCHOR_HASH_PART_HEX
    return int(digest_hex[:n], 16), int(digest_hex[n : 2 * n], 16)


def hash_prefix(high: float, low: float) -> str:
    """The 24-hex-digit hash prefix two published numbers stand for (ValueError if they cannot)."""
    parts = []
    for value in (high, low):
        if math.isnan(value) or value < 0 or value >= 16**ANCHOR_HASH_PART_HEX or value != int(value):
            raise ValueError(f"{value!r} is not a published hash part")
        parts.append(f"{int(value):0{ANCHOR_HASH_PART_HEX}x}")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Anchor:
    """A chain head published earlier (off the node): the record ``seq`` had hash ``hash`` (the
    whole 64-hex-digit hash, or a prefix of at least 24 digits as the operator publishes it)."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQ:HASH`` (ValueError otherwise)."""
        seq, sep, value = text.partition(":")
        if (
            not sep
            or not seq.isdigit()
            or not MIN_ANCHOR_HEX <= len(value) <= 64
            or any(c not in "0123456789abcdef" for c in value)
        ):
            raise ValueError(
                f"anchor {text!r} is not SEQ:HASH (a record number and its hash: 64 hex digits, or the first "
                f"{MIN_ANCHOR_HEX} or more)"
            )
        return cls(int(seq), value)

    def matches(self, digest_hex: str) -> bool:
        return digest_hex.startswith(self.hash)


def verify(paths: list[Path], anchors: Sequence[Anchor] = (), *, allow_restarts: bool = False) -> VerifyResult:
    """Check each record's own hash and its link to the record before it.

    The chain must start where chains start (seq 0, ``prev`` the genesis hash): a trail whose
    first records were removed is broken, unless an anchor vouches for it. An anchor (a head
    published earlier) must be in the chain with its hash: that proves everything up to it
    (each record's hash covers the one before) and detects a trail cut back before it. A new
    chain starting mid-trail (seq 0 again) is how a truncated trail followed by forged records
    would look, so it is refused unless ``allow_restarts`` (a log concatenating guard runs).
    """
    count, restarts = 0, 0
    first_seq: int | None = None
    last_seq, last_hash = -1, GENESIS
    wanted = {a.seq: a for a in anchors}
    found: set[int] = set()
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
        if not isinstance(seq, int) or isinstance(seq, bool):
            return VerifyResult(False, count, f"{label}: seq is not an integer (edited)")
        if record_hash(rec) != rec["hash"]:
            return VerifyResult(False, count, f"{label}: content does not match its hash (the record was edited)")
        if count == 0:
            first_seq = seq
            if seq == 0 and rec["prev"] != GENESIS:
                return VerifyResult(False, count, f"{label}: first record of a chain must have prev={GENESIS[:8]}…")
        elif seq == 0 and rec["prev"] == GENESIS:
            if not allow_restarts:
                return VerifyResult(
                    False,
                    count,
                    f"{label}: a new chain starts after seq {last_seq} (a truncated trail followed by forged "
                    "records looks like this; for a log that concatenates several guard runs pass --allow-restarts)",
                )
            restarts += 1
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
        anchor = wanted.get(seq)
        if anchor is not None:
            if not anchor.matches(rec["hash"]):
                return VerifyResult(
                    False,
                    count,
                    f"{label}: does not match the anchor {seq}:{anchor.hash[:12]}… (the trail was rewritten)",
                )
            found.add(seq)
        last_seq, last_hash = seq, rec["hash"]
        count += 1
    if count == 0:
        return VerifyResult(False, 0, "no records found")
    missing = sorted(set(wanted) - found)
    if missing:
        return VerifyResult(
            False,
            count,
            f"the anchor at seq {missing[0]} is not in the trail (seq {first_seq}..{last_seq}): "
            + (
                f"records after seq {last_seq} were removed"
                if missing[0] > last_seq
                else "its records are missing (pass the older rotated files first)"
            ),
        )
    if first_seq and not found:
        return VerifyResult(
            False,
            count,
            f"the trail starts at seq {first_seq}, not at the start of a chain: earlier records are missing "
            "(pass the older rotated files first, or --anchor SEQ:HASH from a published head)",
        )
    notes = []
    if first_seq:
        notes.append(f"starts at seq {first_seq}, vouched for by the anchor")
    if found:
        notes.append(f"anchor{'s' if len(found) > 1 else ''} at seq {', '.join(map(str, sorted(found)))} matched")
    if restarts:
        notes.append(f"{restarts} chain restart(s), each new chain unanchored")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return VerifyResult(True, count, f"{count} records, seq {first_seq}..{last_seq}, chain intact{extra}")


USAGE = """usage: agentfleet audit verify [--anchor SEQ:HASH]... [--allow-restarts] FILE [FILE...]
       agentfleet audit head FILE

verify: check the hash chain of a guard audit trail. With rotated files, pass them oldest first
(e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl). The trail must start at seq 0 unless an anchor
(a chain head published earlier, e.g. from the guard's GET /audit/head) vouches for it; each
anchor must be in the trail with its hash, which also detects a trail cut back before it.
Exit 0 if intact, 1 if broken (naming the first broken record), 2 on usage errors.

head: print the chain head of a file as SEQ:HASH (to publish as a later anchor)."""


def main(argv: list[str]) -> int:
    """``agentfleet audit verify|head ...``."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "head" and len(rest) == 1:
        head = chain_head(Path(rest[0]))
        if head is None:
            print(f"agentfleet audit head: {rest[0]}: no audit record found", file=sys.stderr)
            return 1
        print(f"{head[0]}:{head[1]}")
        return 0
    if command != "verify":
        print(USAGE, file=sys.stderr)
        return 2
    anchors: list[Anchor] = []
    allow_restarts = False
    files: list[str] = []
    it = iter(rest)
    for arg in it:
        if arg == "--allow-restarts":
            allow_restarts = True
        elif arg == "--anchor" or arg.startswith("--anchor="):
            value = arg.partition("=")[2] if "=" in arg else next(it, "")
            try:
                anchors.append(Anchor.parse(value))
            except ValueError as exc:
                print(f"agentfleet audit verify: {exc}", file=sys.stderr)
                return 2
        elif arg.startswith("--"):
            print(f"agentfleet audit verify: unknown option {arg}\n\n{USAGE}", file=sys.stderr)
            return 2
        else:
            files.append(arg)
    if not files:
        print(USAGE, file=sys.stderr)
        return 2
    paths = [Path(p) for p in files]
    for p in paths:
        if not p.is_file():
            print(f"agentfleet audit verify: {p}: no such file", file=sys.stderr)
            return 2
    result = verify(paths, anchors, allow_restarts=allow_restarts)
    if result.ok:
        print(f"OK: {result.message}")
        return 0
    print(f"BROKEN: {result.message}", file=sys.stderr)
    return 1
