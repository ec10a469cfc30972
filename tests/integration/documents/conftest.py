"""Fixtures of the DocumentParse integration tests: ``parse`` on the tiny server, and
``fault_parse`` on a one-worker server with test-only faults on and tight limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from documents_calls import FAULT_MAX_BYTES, FAULT_TIMEOUT_S, Parse, make_parse
from support import InProcessServer
from zopilot_server.config import ServerConfig


@pytest.fixture
def parse(tiny_server: InProcessServer) -> Iterator[Parse]:
    yield from make_parse(tiny_server)


@pytest.fixture(scope="module")
def fault_server(
    tiny_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    config = dataclasses.replace(
        tiny_config,
        doc_workers=1,
        doc_max_queue=0,
        doc_timeout_s=FAULT_TIMEOUT_S,
        doc_max_bytes=FAULT_MAX_BYTES,
        doc_fault_injection=True,
        doc_model_dir=str(tmp_path_factory.mktemp("no-ocr-models")),
    )
    server = InProcessServer(config)
    yield server
    server.stop()


@pytest.fixture
def fault_parse(fault_server: InProcessServer) -> Iterator[Parse]:
    yield from make_parse(fault_server)
