"""The guard sidecar: an OpenAI-compatible proxy that enforces one agent revision's budgets.

It sits between the agent and its LLM API (and declared HTTP tools) inside the pod, because
only something on the request path can stop a loop or a budget overrun before it costs money.

The package is layered (``tests/guard/test_guard_layers.py`` checks it; there is no import
cycle), so that a new protocol is a new adapter and never a copy of a check:

- checks, pure and protocol-neutral: ``shapes`` (the internal shape every check works on:
  tool calls, tool results, usage, the task's identity and history), ``errors`` (stable codes),
  ``config`` (limits derived once from the rendered ``GuardConfig``), ``budgets`` (token and cost
  ledgers with reservations), ``tasks`` (bounded per-task counters), ``loops`` (call and error
  signatures), ``toolgate`` (allowlist, caps, loops), ``injection`` (heuristics), ``breaker``,
  ``metrics``;
- transport: ``upstream`` (deadline-bounded calls with jittered retries and the breaker);
- ``state``: the shared state of one guard process (config, ledger, tasks, gate, breaker,
  metrics, audit, upstream);
- ``core``: the control core: every decision on an LLM call or a tool call, on the neutral
  shapes, with its bookkeeping (settle, count, audit);
- adapters, one per protocol: ``openai_wire`` (pure mapping of the OpenAI format to the shapes),
  ``openai_chat`` (chat completions and embeddings), ``openai_stream`` (the streaming relay that
  holds tool calls), ``toolproxy`` (``/tools/NAME``), ``httpio`` (bodies and error responses);
- ``app``: the server (routes, health, graceful shutdown); ``cli``: ``agentfleet guard``.

The hash-chained audit trail is ``agentfleet.audit`` (shared with ``agentfleet audit verify``).
"""
