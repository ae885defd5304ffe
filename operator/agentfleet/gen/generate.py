"""``agentfleet generate [--check]``: every file derived from the API types, in one place.

The types are the single source of truth; the CRDs, the admission policy, docs/api.md and the
chart's copies of the first two are outputs. ``--check`` fails (and names the file) when a
committed copy drifted, so a test and CI catch an edit that forgot to regenerate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentfleet.gen import admission, approvals, crds, docs

CHART = Path("charts/agentfleet")


def outputs() -> dict[Path, str]:
    """Repository-relative path -> content of every generated file."""
    out: dict[Path, str] = {}
    for name, text in crds.files().items():
        out[Path("crds") / name] = text
        out[CHART / "crds" / name] = text
    for name, text in admission.files().items():
        out[Path("crds/admission") / name] = text
        out[CHART / "files" / name] = text
    for name, text in approvals.crd_files().items():
        out[Path("crds") / name] = text
        out[CHART / "crds" / name] = text
    for name, text in approvals.admission_files().items():
        out[Path("crds/admission") / name] = text
        out[CHART / "files" / name] = text
    out[Path(docs.PATH)] = docs.render()
    return out


def drifted(root: Path) -> list[Path]:
    """Generated files under ``root`` that are missing or differ from what the types say."""
    return [p for p, text in outputs().items() if not (root / p).exists() or (root / p).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentfleet generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file drifted")
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.check:
        stale = drifted(root)
        for path in stale:
            print(f"{path} drifted from the API types; run `agentfleet generate`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
