"""Shared fixtures: model directories (tiny random Llama, real SmolLM2), servers and the
test PKI, for tests/unit/ and tests/integration/ alike.

What goes where (unit: no server and no external tool; integration: the rest, by package
area) is in tests/README.md; helpers two test files share live in modules beside this
file, never in a test file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from model_builders import tiny_architecture_config
from support import InProcessServer, build_tiny_llama
from zopilot_client.pb import documents_pb2_grpc, generation_pb2_grpc
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading import default_model

if TYPE_CHECKING:
    from tls_pki import Pki

REPO = Path(__file__).resolve().parents[1]
# Converted models are cached across runs (the conversion takes ~15 s); CI starts empty.
CACHE_DIR = Path(os.environ.get("ZOPILOT_TEST_CACHE", REPO / ".cache" / "test-models"))


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR


@pytest.fixture(scope="session")
def smollm2_dir(model_cache_dir: Path) -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once into the cache."""
    return default_model.ensure_converted(model_cache_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir: Path, model_cache_dir: Path) -> ServerConfig:
    return ServerConfig(model=str(tiny_model_dir), cache_dir=str(model_cache_dir), max_queue=8)


@pytest.fixture(scope="session")
def tiny_server(tiny_config: ServerConfig) -> Iterator[InProcessServer]:
    """A shared server on the tiny model. Tests must not change its configuration."""
    server = InProcessServer(tiny_config)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_dir: Path, model_cache_dir: Path) -> Iterator[InProcessServer]:
    """A shared server on the real embedded SmolLM2 (model flag empty = the default)."""
    server = InProcessServer(ServerConfig(cache_dir=str(model_cache_dir)))
    yield server
    server.stop()


@pytest.fixture
def make_server(tiny_config: ServerConfig) -> Iterator[Callable[..., InProcessServer]]:
    """Start a dedicated tiny-model server with config overrides; stopped after the test."""
    import dataclasses

    started: list[InProcessServer] = []

    def start(**overrides: Any) -> InProcessServer:
        server = InProcessServer(dataclasses.replace(tiny_config, **overrides))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tiny_stub(tiny_server: InProcessServer) -> Iterator[generation_pb2_grpc.GenerationStub]:
    with grpc.insecure_channel(tiny_server.target) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.fixture
def docs(tiny_server: InProcessServer) -> Iterator[documents_pb2_grpc.DocumentsStub]:
    """A Documents stub on the tiny server (the server's and the documents' tests)."""
    with tiny_server.channel() as channel:
        yield documents_pb2_grpc.DocumentsStub(channel)


@pytest.fixture
def smollm2_stub(smollm2_server: InProcessServer) -> Iterator[generation_pb2_grpc.GenerationStub]:
    with grpc.insecure_channel(smollm2_server.target) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.fixture(scope="session")
def model_dirs(
    smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Random-weight models of other architectures, built on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    made: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_architecture_config(name, tokenizer))
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            made[name] = out
        return made[name]

    return build


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test CA and certificates for 127.0.0.1 / localhost (tls_pki.py)."""
    # Imported here: tests_quant/ loads this file in a venv without ``cryptography``.
    from tls_pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tgis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """A TGIS client generated at test time from protos/fmaas (not the server's stubs)."""
    import importlib
    import sys

    from grpc_tools import protoc
    from support import REPO

    out = tmp_path_factory.mktemp("tgis-client")
    args = [
        "grpc_tools.protoc",
        f"-I{REPO / 'protos' / 'fmaas'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "generation.proto",
    ]
    assert protoc.main(args) == 0
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("generation_pb2"),
            importlib.import_module("generation_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))
