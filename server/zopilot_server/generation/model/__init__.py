"""The model side of a step: the runner's forwards over the arena, the packed step's
attention, token choice for the whole batch, per-token details, structured-output
constraints, and recognising out-of-memory errors."""
