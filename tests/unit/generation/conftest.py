"""Fixtures of the unit tests of generation/: a scheduler harness over a fake runner
(scheduler_fakes.py), closed after each test.
"""

from __future__ import annotations

import pytest
from scheduler_fakes import FakeRunner, Harness
from zopilot_server.generation.sched.scheduler import BatchLimits


@pytest.fixture
def harness_factory():
    made: list[Harness] = []

    def make(runner: FakeRunner | None = None, **limits) -> Harness:
        harness = Harness(BatchLimits(**limits), runner)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.runner.gate.set()
        harness.scheduler.close(5)
