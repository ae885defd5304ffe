"""Shared asynchronous Kubernetes I/O: the client, status writes with optimistic concurrency, Events."""
