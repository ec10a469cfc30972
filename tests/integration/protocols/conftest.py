"""Fixtures of the protocol adapters' tests: a tritonclient on the tiny server and the
name the server serves its model under.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as triton
from kserve_calls import model_name
from support import InProcessServer


@pytest.fixture(scope="module")
def client(tiny_server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(tiny_server.target) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def name(tiny_server: InProcessServer) -> str:
    return model_name(tiny_server)
