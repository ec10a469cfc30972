"""The KV cache: the arena of per-layer K/V slots allocated once from a memory budget, and
the prefix index that lets a new request reuse the blocks a slot already holds."""
