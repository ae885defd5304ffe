"""agentfleet: a Kubernetes operator that runs fleets of AI agents safely."""

__version__ = "0.1.0"
