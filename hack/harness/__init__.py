"""What the tests, the benchmarks (``hack/bench``) and the demo (``hack/demo``) run agentfleet with.

Not part of the product. One copy of each piece, so that a test, a benchmark and the demo
exercise the operator the same way:

- ``kube``: the local control plane (``hack/cluster``) on a run directory and port range of its
  own, a kubectl handle, Prometheus, a deadline poll;
- ``processes``: the operator, the fake LLM and the data plane simulator as processes;
- ``agents``: AgentDeployment manifests and waits on their status;
- ``fake_llm``: a fault-injecting OpenAI-compatible server;
- ``realnode``: a cluster whose pods really run (``hack/cluster up --real-node``, or kind), with
  Prometheus, the chart and the fake LLM as pods (the e2e tier and ``hack/demo``);
- ``dataplane``: real guard processes and scripted agents for KWOK pods (``python -m
  hack.harness.dataplane``).

Importable as ``hack.harness`` with the repository root on ``sys.path`` (pytest's rootdir, the
``cwd`` of ``python -m hack.bench``, or ``hack/demo`` adding it). Nothing is imported here, so
``python -m hack.harness.dataplane`` stays quick to start.
"""
