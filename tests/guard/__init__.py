"""Tests of the guard sidecar (``agentfleet.guard``); none of them needs a cluster."""
