"""KServe v2 / Triton stubs (generated)."""
