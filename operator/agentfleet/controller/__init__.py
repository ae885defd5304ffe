"""The operator: kopf handlers (the imperative shell) around the pure render and policy core."""
