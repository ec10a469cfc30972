"""Scheduling, without torch: admission and the queue, each request's record and progress,
the plan the scheduler hands the model runner every step and what comes back, and the
per-request run control (cancellation, time limit, deadline) checked every step."""
