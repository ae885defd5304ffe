#!/usr/bin/env python3
"""The guard's benchmark alone: added latency p50/p99 against calling the same fake upstream
directly (concurrency 1, 64, 256), streaming time-to-first-token, requests per second per core.

A thin entry to the ``guard`` section of ``make bench`` (hack/bench/guard.py), without LiteLLM
and without rewriting docs/benchmarks.md:

    .venv/bin/python hack/bench_guard.py [--requests N] [--with-litellm]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack.bench.__main__ import main


def guard_only(argv: list[str]) -> list[str]:
    extra = [a for a in argv if a != "--with-litellm"]
    return ["--only", "guard", "--no-doc", *([] if "--with-litellm" in argv else ["--no-litellm"]), *extra]


if __name__ == "__main__":
    sys.exit(main(guard_only(sys.argv[1:])))
