"""A local data plane for agentfleet's tests, demo and benchmarks -- not part of the product.

KWOK pods run nothing; ``python -m hack.harness.dataplane`` runs, for every Running agent pod,
a real guard with the pod's rendered config and a scripted ``openai``-SDK agent against the
fake LLM, and registers each guard with Prometheus through file-based discovery. See
``README.md`` in this directory; tests, benchmarks and the demo start it through
``hack.harness.processes``. (Submodules are not imported here, so ``python -m
hack.harness.dataplane.agent`` runs cleanly.)
"""
