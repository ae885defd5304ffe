"""The operator process's Prometheus registry: controller and evaluator register their
``agentfleet_operator_*`` metrics here, and the manager serves it on ``--metrics-port``.

Its own module (not the controller's) so that controller and evaluator stay siblings."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

REGISTRY = CollectorRegistry()
