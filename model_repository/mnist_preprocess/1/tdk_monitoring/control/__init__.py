"""Runtime control of a running Triton: the database layer, the version registry, rollouts, the router, the watcher."""
