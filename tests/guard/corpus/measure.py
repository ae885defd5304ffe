"""Measure the injection heuristics: detection on public attacks, false positives on benign tool output.

    .venv/bin/python -m tests.guard.corpus.measure [--show-misses N] [--show-false-positives]

Prints the detection rate per attack family and the false-positive rate per benign source,
with 95% Wilson intervals (the corpora are a few hundred texts each, so the intervals matter).
See ``build.py`` for where every text comes from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agentfleet.guard.injection import scan
from tests.guard.corpus import handwritten

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sample:
    group: str
    text: str


def _jsonl(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def malicious() -> list[Sample]:
    """Public indirect injections (AgentDojo templates x goals; agent-injection-bench)."""
    out = []
    for row in _jsonl("malicious.jsonl"):
        parts = row["source"].split(":")
        group = f"agentdojo/{parts[1]}" if parts[0] == "agentdojo" else f"{parts[0]}/{parts[2]}"
        out.append(Sample(group, row["text"]))
    return out


def heldout() -> list[Sample]:
    """garak's latent injections: never used to write the heuristics (out-of-sample)."""
    return [Sample("heldout/garak-latentinjection", r["text"]) for r in _jsonl("heldout.jsonl")]


def benign() -> list[Sample]:
    """AgentDojo environment records (JSON and text) and the handwritten tool outputs."""
    out = [
        Sample(
            f"{r['source'].split('/')[0]}:{r['format']}"
            if r["source"].startswith("agentdojo")
            else r["source"].rsplit(":", 2)[0] + ":control",
            r["text"],
        )
        for r in _jsonl("benign.jsonl")
    ]
    out += [Sample(f"handwritten:{category}", text) for category, text in handwritten.texts()]
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rates:
    detected: int
    attacks: int
    flagged: int
    benign: int
    by_group: dict[str, tuple[int, int]]
    misses: list[Sample]
    false_positives: list[tuple[Sample, tuple[str, ...]]]

    @property
    def detection(self) -> float:
        return self.detected / self.attacks

    @property
    def false_positive_rate(self) -> float:
        return self.flagged / self.benign


Detector = Callable[[str], tuple[bool, tuple[str, ...]]]


def heuristics(text: str) -> tuple[bool, tuple[str, ...]]:
    verdict = scan(text)
    return verdict.suspicious, verdict.signals


def measure(detector: Detector = heuristics, attacks: Iterable[Sample] = (), clean: Iterable[Sample] = ()) -> Rates:
    attacks = list(attacks) or malicious()
    clean = list(clean) or benign()
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    for s in attacks:
        hit, _ = detector(s.text)
        groups[s.group][0] += hit
        groups[s.group][1] += 1
        if not hit:
            misses.append(s)
    fps = []
    for s in clean:
        hit, signals = detector(s.text)
        groups[s.group][0] += hit
        groups[s.group][1] += 1
        if hit:
            fps.append((s, signals))
    return Rates(
        len(attacks) - len(misses),
        len(attacks),
        len(fps),
        len(clean),
        {g: (k, n) for g, (k, n) in sorted(groups.items())},
        misses,
        fps,
    )


def report(rates: Rates) -> str:
    lo, hi = wilson(rates.detected, rates.attacks)
    flo, fhi = wilson(rates.flagged, rates.benign)
    lines = [
        f"detection:      {rates.detected}/{rates.attacks} = {rates.detection:.1%} (95% CI {lo:.1%}-{hi:.1%})",
        f"false positive: {rates.flagged}/{rates.benign} = {rates.false_positive_rate:.1%} "
        f"(95% CI {flo:.1%}-{fhi:.1%})",
        "",
        f"{'group':44} {'flagged':>8} {'of':>5} {'rate':>7}",
    ]
    lines += [f"{g:44} {k:>8} {n:>5} {k / n:>7.1%}" for g, (k, n) in rates.by_group.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show-misses", type=int, default=0, metavar="N")
    parser.add_argument("--show-false-positives", action="store_true")
    args = parser.parse_args(argv)
    rates = measure()
    print(report(rates))
    held = measure(attacks=heldout())
    lo, hi = wilson(held.detected, held.attacks)
    print(
        f"\nheld out (garak latent injections, out-of-sample): {held.detected}/{held.attacks} = "
        f"{held.detection:.1%} (95% CI {lo:.1%}-{hi:.1%})"
    )
    for s in rates.misses[: args.show_misses]:
        print(f"\nMISSED [{s.group}]: {s.text[:300]!r}")
    if args.show_false_positives:
        for s, signals in rates.false_positives:
            print(f"\nFALSE POSITIVE [{s.group}] {signals}: {s.text[:300]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
