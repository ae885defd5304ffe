"""``kubectl agentfleet``: the kubectl plugin (stdlib + PyYAML only, so it runs anywhere kubectl does)."""
