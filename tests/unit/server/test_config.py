"""One ServerConfig from flags, with ZOPILOT_* env fallbacks shown in --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from zopilot_server.config import ServerConfig, build_parser, load_config


def test_defaults():
    config = load_config([], env={})
    assert config == ServerConfig()
    assert (config.host, config.port) == ("127.0.0.1", 50051)
    assert config.doc_max_bytes == 32 * 1024 * 1024
    assert config.max_batch_size == 16


def test_env_fallback_and_flag_precedence():
    env = {"ZOPILOT_PORT": "6000", "ZOPILOT_MAX_QUEUE": "3", "ZOPILOT_BNB_DOUBLE_QUANT": "true"}
    config = load_config([], env=env)
    assert (config.port, config.max_queue, config.bnb_double_quant) == (6000, 3, True)
    config = load_config(["--port", "7000", "--no-bnb-double-quant"], env=env)
    assert (config.port, config.bnb_double_quant) == (7000, False)


def test_protocols_and_served_model_name():
    assert load_config([], env={}).protocol_set == {"zopilot", "kserve", "tgis", "vllm"}
    config = load_config(["--protocols", "tgis, kserve"], env={"ZOPILOT_SERVED_MODEL_NAME": "m/1"})
    assert config.protocol_set == {"tgis", "kserve"} and config.served_model_name == "m/1"


def test_every_setting_has_a_flag_and_env_in_help():
    help_text = " ".join(build_parser(env={}).format_help().split())
    for field in dataclasses.fields(ServerConfig):
        assert "--" + field.name.replace("_", "-") in help_text
        assert f"env ZOPILOT_{field.name.upper()}" in help_text


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--port", "70000"], {}, "--port must be 0..65535"),
        (["--max-batch-size", "0"], {}, "--max-batch-size must be >= 1"),
        (["--bnb-int8-threshold", "-1"], {}, "--bnb-int8-threshold must be >= 0"),
        (["--device", "tpu"], {}, "invalid choice"),
        ([], {"ZOPILOT_PORT": "abc"}, "ZOPILOT_PORT"),
        (["--default-max-new-tokens", "9000"], {}, "must not exceed --max-new-tokens-limit"),
        (["--protocols", "zopilot,grpc"], {}, "--protocols: a comma-separated subset"),
        (["--protocols", " , "], {}, "--protocols: a comma-separated subset"),
        ([], {"ZOPILOT_PROTOCOLS": "triton"}, "--protocols"),
        (["--served-model-name", " padded "], {}, "--served-model-name"),
        (["--served-model-name", "a\nb"], {}, "--served-model-name"),
        (["--served-model-name", "m" * 300], {}, "--served-model-name"),
        (["--max-step-stall", "0.5"], {}, "--max-step-stall must be in [1, 100]"),
        (["--max-step-stall", "nan"], {}, "--max-step-stall must be in [1, 100]"),
        (["--max-step-stall", "inf"], {}, "--max-step-stall must be in [1, 100]"),
        ([], {"ZOPILOT_MAX_STEP_STALL": "fast"}, "ZOPILOT_MAX_STEP_STALL"),
    ],
)
def test_bad_values_are_usage_errors(argv, env, needle, capsys):
    with pytest.raises(SystemExit) as info:
        load_config(argv, env=env)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_max_step_stall_from_flag_and_env():
    assert load_config(["--max-step-stall", "1.5"], env={}).max_step_stall == 1.5
    assert load_config([], env={"ZOPILOT_MAX_STEP_STALL": "3"}).max_step_stall == 3.0
    assert load_config([], env={}).max_step_stall == 2.0


def test_help_runs_as_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "zopilot_server", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "ZOPILOT_MODEL" in result.stdout and "--quantize" in result.stdout
