"""The first start's log says what happens, not transformers' advice about what we handle
("Some weights ... newly initialized ... TRAIN this model" for a GGUF's tied lm_head, the
GGUF tokenizer's legacy note, "Starting from v4.46 ...", the dequantization bar), while a
real loading problem still shows (model_loader.quiet_handled_noise)."""

from __future__ import annotations

import logging
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from server_processes import read_until, start_process, start_tiny_process
from support import assert_generates
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading import default_model, model_loader

HANDLED_PHRASES = (
    "Some weights of",
    "TRAIN this model",
    "default legacy behaviour",
    "Starting from v4.46",
    "de-quantizing GGUF tensors",
)
LM_HEAD_ONLY = (
    "Some weights of LlamaForCausalLM were not initialized from the model checkpoint at /m and "
    "are newly initialized: ['lm_head.weight']\nYou should probably TRAIN this model on a "
    "down-stream task to be able to use it for predictions and inference."
)


def serve_once_and_stop(process, port: int, log: str) -> str:
    """Answer one generation (the first forward logs the logits note), SIGTERM, whole log."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert_generates(generation_pb2_grpc.GenerationStub(channel))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        return log + process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_gguf_start_logs_none_of_the_handled_noise() -> None:
    """--model FILE.gguf goes through every handled message (the embedded model's first
    conversion loads the same GGUF the same way, under the same filters)."""
    process = start_process("--port", "0", "--model", str(default_model.gguf_path()))
    log = read_until(process, r"ready: health SERVING", timeout=240)
    port = int(log.split("listening on 127.0.0.1:")[1].split()[0])
    log = serve_once_and_stop(process, port, log)
    for phrase in HANDLED_PHRASES:
        assert phrase not in log, (phrase, log)
    assert "tying it to the input embeddings" in log  # what we did instead, said once
    assert "loaded " in log and "Traceback" not in log


@pytest.fixture
def model_missing_a_weight(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with its final norm weight removed from the checkpoint: a real
    problem (transformers initializes it at random) that the log must show."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["model.norm.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return broken


def test_a_real_loading_problem_still_logs(model_missing_a_weight, model_cache_dir) -> None:
    process, port, log = start_tiny_process(model_missing_a_weight, model_cache_dir)
    log = serve_once_and_stop(process, port, log)
    assert "Some weights of LlamaForCausalLM were not initialized" in log
    assert "model.norm.weight" in log
    assert "Starting from v4.46" not in log  # handled on every model (runner upcasts)


@contextmanager
def records_of(logger_name: str) -> Iterator[list[str]]:
    """Messages that pass ``logger_name``'s filters (a handler on the logger itself)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def test_the_filters_are_scoped_and_exact() -> None:
    utils = logging.getLogger("transformers.modeling_utils")
    with records_of("transformers.modeling_utils") as seen:
        with model_loader.quiet_handled_noise(gguf=True):
            utils.warning(LM_HEAD_ONLY)
            utils.warning(LM_HEAD_ONLY.replace("['lm_head.weight']", "['lm_head.weight', 'x']"))
            utils.warning("some other warning")
        with model_loader.quiet_handled_noise(gguf=False):  # a plain HF directory
            utils.warning(LM_HEAD_ONLY)
        utils.warning(LM_HEAD_ONLY)  # after loading
    assert len(seen) == 4
    assert "'x'" in seen[0] and seen[1] == "some other warning"
    assert seen[2] == seen[3] == LM_HEAD_ONLY


def test_the_default_model_conversion_runs_under_the_filters(monkeypatch, tmp_path) -> None:
    def converting(cache_dir: str) -> Path:
        logging.getLogger("transformers.modeling_utils").warning(LM_HEAD_ONLY)
        return tmp_path

    monkeypatch.setattr(default_model, "ensure_converted", converting)
    with records_of("transformers.modeling_utils") as seen:
        source = model_loader.resolve_source(ServerConfig(cache_dir=str(tmp_path)))
    assert source.directory == tmp_path and seen == []
