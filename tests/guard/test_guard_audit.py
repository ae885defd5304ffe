"""Audit trail (pure, files only): chain, redaction, rotation, restarts, overflow, verify."""

from __future__ import annotations

import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentfleet.api.guardconfig import AuditSink
from agentfleet.audit import GENESIS, AuditLog, main, verify

pytestmark = pytest.mark.unit

IDENTITY = {"namespace": "team-a", "agent": "support", "revision": "rev1"}


def write(path: Path, n: int, **sink: Any) -> AuditLog:
    log = AuditLog(AuditSink(stdout=False, file=str(path), **sink), IDENTITY)
    log.start()
    for i in range(n):
        log.record(
            "llm_call", task=f"t{i % 3}", decision="allow", tokens_in=i, cost="0.001", prompt=log.content(f"prompt {i}")
        )
    log.close()
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_chain_links_every_record_and_redacts_content(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 5)
    records = [json.loads(line) for line in lines(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert records[2]["prompt"] == {"sha256": records[2]["prompt"]["sha256"], "length": 8}
    assert "prompt 2" not in path.read_text()
    assert {records[0][k] for k in IDENTITY} == set(IDENTITY.values())
    assert verify([path]).ok


def test_capture_content_opt_in(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AuditLog(AuditSink(stdout=True), IDENTITY, capture_content=True, stream=stream)
    log.start()
    log.record("llm_call", prompt=log.content([{"role": "user", "content": "hello"}]))
    log.close()
    assert json.loads(stream.getvalue())["prompt"] == {"content": [{"role": "user", "content": "hello"}]}


def tamper(path: Path, change: Any) -> list[str]:
    rows = lines(path)
    change(rows)
    path.write_text("\n".join(rows) + "\n")
    return rows


def test_verify_detects_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 6)

    def edit(rows: list[str]) -> None:
        rec = json.loads(rows[3])
        rec["tokens_in"] = 0
        rows[3] = json.dumps(rec, sort_keys=True, separators=(",", ":"))

    tamper(path, edit)
    result = verify([path])
    assert not result.ok
    assert f"{path}:4 (seq 3)" in result.message and "edited" in result.message


def test_verify_detects_an_edit_of_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 3)
    tamper(path, lambda rows: rows.__setitem__(2, rows[2].replace('"allow"', '"reject"')))
    assert "seq 2" in verify([path]).message


def test_verify_detects_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 6)
    tamper(path, lambda rows: rows.pop(2))
    result = verify([path])
    assert not result.ok and f"{path}:3 (seq 3)" in result.message and "deleted" in result.message


def test_verify_detects_a_reorder(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 6)

    def swap(rows: list[str]) -> None:
        rows[2], rows[3] = rows[3], rows[2]

    tamper(path, swap)
    result = verify([path])
    assert not result.ok and "(seq 3)" in result.message


def test_verify_detects_a_forged_recomputed_record(tmp_path: Path) -> None:
    """Rewriting one record with a correct own hash still breaks the next record's link."""
    from agentfleet.audit import record_hash

    path = tmp_path / "a.jsonl"
    write(path, 4)

    def forge(rows: list[str]) -> None:
        rec = json.loads(rows[1])
        rec["decision"] = "reject"
        rec["hash"] = record_hash(rec)
        rows[1] = json.dumps(rec)

    tamper(path, forge)
    result = verify([path])
    assert not result.ok and "(seq 2)" in result.message and "replaced" in result.message


def test_chain_continues_across_restarts_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 20, max_bytes=2048, backups=10)
    write(path, 20, max_bytes=2048, backups=10)  # a restart appends to the same chain
    rotated = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert rotated, "expected rotation at 2 KiB"
    files = [*rotated, path]
    assert all(p.stat().st_size <= 2048 + 600 for p in files)
    result = verify(files)
    assert result.ok and result.records == 40, result.message
    alone = verify([path])
    assert alone.ok and "rotated files" in alone.message
    assert not verify([rotated[1], path]).ok  # a missing middle file is a deletion


def test_overflow_is_recorded_as_a_gap_not_a_silent_hole(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(AuditSink(stdout=False, file=str(path)), IDENTITY, queue_size=2)
    for i in range(7):  # writer not started yet: the queue holds 2
        log.record("llm_call", n=i)
    assert log.dropped == 5
    log.start()
    deadline = time.monotonic() + 5
    while not log.caught_up:
        assert time.monotonic() < deadline, "writer never caught up"
        time.sleep(0.01)
    log.record("llm_call", n=99)
    log.close()
    records = [json.loads(line) for line in lines(path)]
    gaps = [r for r in records if r["kind"] == "audit_gap"]
    assert gaps and gaps[0]["dropped"] == 5
    assert [r.get("n") for r in records if r["kind"] == "llm_call"] == [0, 1, 99]
    assert verify([path]).ok


def test_verify_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 3)
    assert main(["verify", str(path)]) == 0
    assert "OK: 3 records" in capsys.readouterr().out
    tamper(path, lambda rows: rows.pop(1))
    assert main(["verify", str(path)]) == 1
    assert f"BROKEN: {path}:2 (seq 2)" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert main([]) == 2
    path.write_text("")
    assert main(["verify", str(path)]) == 1
