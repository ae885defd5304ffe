"""The guard sidecar: an OpenAI-compatible proxy that enforces one agent revision's budgets.

It sits between the agent and its LLM API (and declared HTTP tools) inside the pod, because
only something on the request path can stop a loop or a budget overrun before it costs money.
The modules are small on purpose; each one owns one enforcement concern:

- ``config``: load the operator-rendered ``GuardConfig`` and local-run flags, derive limits;
- ``errors``: stable, OpenAI-style error codes the agent (and its SDK) can act on;
- ``budgets``: tokens-per-hour and cost-per-day ledgers with reservations (strict under
  concurrency);
- ``tasks``: per-task counters in a bounded table;
- ``loops``: canonical tool-call and tool-error signatures for loop detection;
- ``toolgate``: tool allowlist, per-task caps and loop checks for model-issued tool calls;
- ``breaker``: the circuit breaker for the upstream;
- ``upstream``: deadline-bounded calls with jittered retries;
- ``injection``: prompt-injection heuristics on tool results;
- ``audit``: the hash-chained audit trail and ``agentfleet audit verify``;
- ``metrics``: Prometheus metrics on a private registry;
- ``checks``: per-request bookkeeping and the checks every route shares;
- ``proxy``: the chat/embeddings handlers; ``stream``: the streaming relay that holds tool calls;
- ``toolproxy``: ``/tools/NAME`` for declared HTTP tools;
- ``app``: wiring, health endpoints, graceful shutdown; ``cli``: ``agentfleet guard``.
"""
