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
from agentfleet.audit import GENESIS, Anchor, AuditLog, chain_head, head_path, main, verify

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
    assert not alone.ok and "earlier records are missing" in alone.message
    first = json.loads(lines(path)[0])
    anchored = verify([path], [Anchor(first["seq"], first["hash"])])
    assert anchored.ok and "vouched for by the anchor" in anchored.message, anchored.message
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


def test_verify_detects_a_missing_first_record(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 5)
    tamper(path, lambda rows: rows.pop(0))
    result = verify([path])
    assert not result.ok and "starts at seq 1" in result.message and "missing" in result.message


def test_a_truncated_trail_followed_by_a_forged_chain_is_refused(tmp_path: Path) -> None:
    """Cut the trail back, then append a fresh chain (seq 0, genesis prev) with forged records:
    every record is internally consistent, but a chain restarting mid-file is refused."""
    path, forged = tmp_path / "a.jsonl", tmp_path / "forged.jsonl"
    write(path, 6)
    write(forged, 4)
    path.write_text("\n".join(lines(path)[:3] + lines(forged)) + "\n")
    result = verify([path])
    assert not result.ok and "(seq 0): a new chain starts after seq 2" in result.message
    assert verify([path], allow_restarts=True).ok  # only when asked: a log of several guard runs
    # Forged from record 0 on (the whole file replaced) is caught by an anchor published earlier.
    write(tmp_path / "b.jsonl", 6)
    original_head = chain_head(tmp_path / "b.jsonl")
    assert original_head is not None
    other = AuditLog(AuditSink(stdout=False, file=str(tmp_path / "c.jsonl")), IDENTITY)
    other.start()
    for i in range(9):  # a different trail, longer than the original
        other.record("llm_call", task="forged", decision="allow", tokens_in=i)
    other.close()
    assert verify([tmp_path / "c.jsonl"]).ok
    forged_result = verify([tmp_path / "c.jsonl"], [Anchor(*original_head)])
    assert not forged_result.ok and "does not match the anchor" in forged_result.message


def test_anchors_prove_the_start_and_detect_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 8)
    head = chain_head(path)
    assert head == (7, json.loads(lines(path)[-1])["hash"])
    assert verify([path], [Anchor(*head)]).ok
    tamper(path, lambda rows: rows.__delitem__(slice(6, None)))  # the newest two records removed
    assert verify([path]).ok  # the file alone cannot tell
    result = verify([path], [Anchor(*head)])
    assert not result.ok and "anchor at seq 7 is not in the trail" in result.message
    assert "records after seq 5 were removed" in result.message
    wrong = verify([path], [Anchor(3, "f" * 64)])
    assert not wrong.ok and "does not match the anchor" in wrong.message
    with pytest.raises(ValueError, match="SEQ:HASH"):
        Anchor.parse("7:abc")
    assert Anchor.parse(f"7:{'a' * 64}") == Anchor(7, "a" * 64)


def test_the_writer_publishes_its_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = write(path, 4)
    assert log.head == chain_head(path) and log.head is not None
    published = json.loads(head_path(path).read_text())
    assert (published["seq"], published["hash"]) == log.head
    assert head_path(path).name == "audit.head.json"  # not one of the rotated audit.jsonl.N


def test_a_partial_last_line_is_cut_off_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    with path.open("ab") as fh:
        fh.write(b'{"seq":3,"prev":"abc","kind":"llm_ca')  # a crash mid-write
    write(path, 2)
    records = [json.loads(line) for line in lines(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert records[3]["kind"] == "audit_repair" and records[3]["dropped_bytes"] == 36
    assert verify([path]).ok


def test_verify_cli_anchor_and_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 5)
    assert main(["head", str(path)]) == 0
    head = capsys.readouterr().out.strip()
    assert head.startswith("4:") and len(head) == 66
    assert main(["verify", "--anchor", head, str(path)]) == 0
    assert "anchor at seq 4 matched" in capsys.readouterr().out
    tamper(path, lambda rows: rows.pop())
    assert main(["verify", f"--anchor={head}", str(path)]) == 1
    assert "records after seq 3 were removed" in capsys.readouterr().err
    assert main(["verify", "--anchor", "nonsense", str(path)]) == 2
    assert main(["verify", "--bogus", str(path)]) == 2
    assert main(["head", str(tmp_path / "empty")]) == 1
