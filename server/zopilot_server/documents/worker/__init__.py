"""A parser worker process: entry point, sandbox, limits, faults and dispatch."""
