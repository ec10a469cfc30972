"""From chosen tokens to what the caller receives: text deltas without half characters,
stop sequences across tokens, and the channel that carries chunks from the scheduler
thread to the event loop."""
