"""Command-line entry points: ``agentfleet`` and the kubectl plugin ``kubectl-agentfleet``."""
