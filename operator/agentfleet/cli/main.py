"""``agentfleet``: one binary, several roles. Each role's module is imported only when used,
so the guard does not pay for the operator's imports and vice versa."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "operator": ("agentfleet.manager", "Run the operator (kopf) against the current kubeconfig."),
    "guard": ("agentfleet.guard.cli", "Run the guard sidecar (OpenAI-compatible enforcing proxy)."),
    "crds": ("agentfleet.gen.crds", "Print the CustomResourceDefinitions generated from the API types."),
    "generate": ("agentfleet.gen.generate", "Write (or --check) every file generated from the API types."),
    "audit": ("agentfleet.audit", "Audit trail tools: `agentfleet audit verify FILE`."),
}


def usage() -> str:
    lines = ["usage: agentfleet COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if args[0] not in COMMANDS:
        print(f"agentfleet: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
