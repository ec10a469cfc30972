"""The real ``zopilot`` console script, run as a subprocess against the real server."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from typing import Any

import pytest
import zopilot_client as zc
from cli_tools import ZOPILOT, run_cli
from support import FakeServer, engine_idle, finish_spy, free_port, health_server_later
from zopilot_client import cli
from zopilot_server.generation.domain import FinishReason as ServerFinish


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("zopilot: ")


# ------------------------------------------------------------------------ generate


def test_every_generation_parameter_has_a_flag():
    parser = cli.build_parser()
    args = parser.parse_args(["generate", "x"])
    flags = {name for name in vars(args) if name in zc.GenerateParams.__annotations__}
    assert flags == set(zc.GenerateParams.__annotations__)


def test_generate_prints_the_same_text_as_the_library(tiny_server):
    result = run_cli(
        "generate",
        "Hello there",
        "--max-new-tokens",
        "6",
        "--ignore-eos",
        target=tiny_server.target,
    )
    assert result.returncode == 0, result.stderr
    with zc.Client(tiny_server.target, timeout=30) as client:
        expected = client.generate("Hello there", max_new_tokens=6, ignore_eos=True).text
    assert result.stdout == expected + "\n"


def test_generate_json_passes_every_flag(tiny_server):
    flags = [
        "--max-new-tokens=4",
        "--min-new-tokens=2",
        "--temperature=0.7",
        "--top-p=0.9",
        "--top-k=5",
        "--repetition-penalty=1.1",
        "--seed=7",
        "--stop=zzzz",
        "--include-stop-sequence",
        "--ignore-eos",
        "--truncate-input-tokens=50",
        "--time-limit-ms=60000",
        "--return-token-details",
        "--top-n-tokens=2",
        "--request-id=cli-1",
    ]
    result = run_cli("generate", "Hello", "--json", *flags, target=tiny_server.target)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["seed"] == 7 and data["request_id"] == "cli-1"
    assert data["usage"]["generated_tokens"] == 4
    assert all(len(token["top_tokens"]) == 2 for token in data["tokens"])
    with zc.Client(tiny_server.target, timeout=30) as client:
        same = client.generate(
            "Hello", max_new_tokens=4, min_new_tokens=2, temperature=0.7, top_p=0.9, top_k=5,
            repetition_penalty=1.1, seed=7, ignore_eos=True,
        )  # fmt: skip
    assert data["text"] == same.text


def test_generate_jsonl_streams_chunks_and_reads_the_prompt_from_stdin(tiny_server):
    result = run_cli(
        "generate", "--jsonl", "--max-new-tokens=3", "--ignore-eos", "--stats",
        target=tiny_server.target, stdin="Hello there",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    chunks = [json.loads(line) for line in result.stdout.splitlines()]
    assert chunks[-1]["finish_reason"] == "length"
    assert all(c["finish_reason"] is None for c in chunks[:-1])
    assert "3 generated tokens" in result.stderr


def test_ctrl_c_cancels_the_generation_on_the_server(tiny_server):
    request_id = uuid.uuid4().hex
    command = [ZOPILOT, "--target", tiny_server.target, "generate", "Hello"]
    command += ["--max-new-tokens=1500", "--ignore-eos", f"--request-id={request_id}"]
    # The generation is held after its first text (FinishSpy hold): it cannot end on its
    # own before the SIGINT lands, however loaded the machine; only a cancel can end it.
    with finish_spy(tiny_server, hold=True) as spy:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert spy.held.wait(60), "the generation never produced text"
            first = process.stdout.read(1)  # the CLI printed it while the server generates
            assert first and tiny_server.running.engine.active_count == 1
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
            spy.release.set()  # the scheduler thread goes on and finds the job cancelled
        assert process.returncode == cli.ExitCode.INTERRUPTED, stderr
        assert "Traceback" not in stderr and "cancelled" in stderr
        assert spy.reason(request_id) is ServerFinish.CANCELLED
    assert engine_idle(tiny_server)


# ---------------------------------------------------------------------------- chat


def test_chat_keeps_the_history_and_uses_the_chat_template(smollm2_server):
    lines = "What is the capital of France?\n\nAnd what did I just ask you?\n"
    result = run_cli(
        "chat", "--json", "--max-new-tokens=12", target=smollm2_server.target, stdin=lines
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert "Paris" in first["text"]
    # The second turn sends the whole conversation: question, answer, new question.
    used = first["usage"]["input_tokens"] + first["usage"]["generated_tokens"]
    assert second["usage"]["input_tokens"] > used


def test_chat_prints_one_reply_per_line_and_reset_forgets(tiny_server):
    lines = "Hi\n/reset\nHi\n"
    result = run_cli(
        "chat", "--max-new-tokens=3", "--ignore-eos", "--system", "Be brief.",
        target=tiny_server.target, stdin=lines,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with zc.Client(tiny_server.target, timeout=30) as client:
        messages = [("system", "Be brief."), ("user", "Hi")]
        reply = client.generate(messages, max_new_tokens=3, ignore_eos=True).text
    assert result.stdout == f"{reply}\n{reply}\n"  # after /reset: the same first turn


# --------------------------------------------------------------- the other commands


def test_info(tiny_server):
    text = run_cli("info", target=tiny_server.target)
    assert text.returncode == 0 and "LlamaForCausalLM" in text.stdout
    data = json.loads(run_cli("info", "--json", target=tiny_server.target).stdout)
    assert data["has_chat_template"] is True and data["quantization"]["mode"] == "none"


def test_tokenize(tiny_server):
    text = run_cli("tokenize", "Hello world", target=tiny_server.target)
    assert text.returncode == 0
    assert text.stdout.splitlines() == ["19556\t'Hello'\t0:5", "905\t'Ġworld'\t5:11"]
    data = json.loads(
        run_cli("tokenize", "--json", "Hello world", target=tiny_server.target).stdout
    )
    assert data["tokens"] == ["Hello", "Ġworld"]


def test_health(tiny_server):
    serving = run_cli("health", target=tiny_server.target)
    assert (serving.returncode, serving.stdout) == (0, "SERVING\n")
    unknown = run_cli("health", "--service", "no.such.Service", target=tiny_server.target)
    assert (unknown.returncode, unknown.stdout) == (cli.ExitCode.USAGE, "SERVICE_UNKNOWN\n")


def test_target_from_the_environment_and_flags_after_the_command(tiny_server):
    from_env = run_cli("health", env={"ZOPILOT_TARGET": tiny_server.target})
    assert from_env.returncode == 0, from_env.stderr
    after = run_cli("--timeout", "30", "health", target=tiny_server.target)
    assert after.returncode == 0, after.stderr


def test_parse_writes_markdown_to_stdout_or_a_file(tiny_server, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("Hello from zopilot\n")
    result = run_cli("parse", str(note), target=tiny_server.target)
    assert result.returncode == 0, result.stderr
    assert "Hello from zopilot" in result.stdout
    out = tmp_path / "note.md"
    written = run_cli("parse", str(note), "-o", str(out), target=tiny_server.target)
    assert written.returncode == 0 and "Hello from zopilot" in out.read_text()
    data = json.loads(run_cli("parse", str(note), "--json", target=tiny_server.target).stdout)
    assert data["metadata"]["detected_type"] == "txt"


def test_parse_unsupported_by_the_server_exits_7(tmp_path):
    document = tmp_path / "note.txt"
    document.write_text("hello")
    fake = FakeServer()  # knows no methods: DocumentParse is UNIMPLEMENTED
    try:
        result = run_cli("parse", str(document), target=fake.target)
    finally:
        fake.stop()
    assert_clean_failure(result, cli.ExitCode.UNSUPPORTED)


def test_parse_a_missing_file_is_a_usage_error(tiny_server, tmp_path):
    result = run_cli("parse", str(tmp_path / "missing.pdf"), target=tiny_server.target)
    assert_clean_failure(result, cli.ExitCode.USAGE)


# ---------------------------------------------------------------- errors, exit codes


def test_invalid_request_exits_2_naming_the_field(tiny_server):
    result = run_cli("generate", "Hi", "--top-p", "2", target=tiny_server.target)
    assert_clean_failure(result, cli.ExitCode.USAGE)
    assert "top_p: must be in (0, 1]" in result.stderr


def test_unreachable_server_exits_3():
    result = run_cli("generate", "Hi", "--no-retry", target=f"127.0.0.1:{free_port()}")
    assert_clean_failure(result, cli.ExitCode.UNAVAILABLE)
    assert "--target" in result.stderr


def test_api_key_from_flag_or_environment(make_server):
    server = make_server(api_key="secret")
    anonymous = run_cli("info", target=server.target)
    assert_clean_failure(anonymous, cli.ExitCode.AUTH)
    assert run_cli("info", "--api-key", "secret", target=server.target).returncode == 0
    assert run_cli("info", target=server.target, env={"ZOPILOT_API_KEY": "secret"}).returncode == 0


def test_busy_server_exits_5(make_server):
    server = make_server(max_queue=0, max_batch_size=1)
    with (
        finish_spy(server, hold=True) as spy,  # the busy stream cannot end before the CLI runs
        zc.Client(server.target, timeout=30) as client,
        client.generate_stream("Hello", max_new_tokens=1500, ignore_eos=True) as busy,
    ):
        next(busy)
        assert spy.held.wait(30)
        result = run_cli("generate", "Hi", "--no-retry", target=server.target)
    assert_clean_failure(result, cli.ExitCode.OVERLOADED)


def test_bad_flags_exit_2_from_argparse():
    result = run_cli("generate", "--max-new-tokens", "lots")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_exit_codes_cover_every_error_class():
    errors: dict[type[Any], int] = {
        zc.InvalidArgument: 2, zc.NotFound: 2, zc.Unavailable: 3, zc.Unauthenticated: 4,
        zc.PermissionDenied: 4, zc.Overloaded: 5, zc.DeadlineExceeded: 6,
        zc.FailedPrecondition: 7, zc.Unimplemented: 7, zc.ServerError: 1, zc.Cancelled: 1,
    }  # fmt: skip
    for kind, code in errors.items():
        assert cli.exit_code(kind("x")) == code, kind


@pytest.mark.parametrize("wait", ["0", "1"])
def test_health_of_a_server_that_never_comes(wait):
    result = run_cli("health", "--wait", wait, "--no-retry", target=f"127.0.0.1:{free_port()}")
    assert result.returncode == cli.ExitCode.UNAVAILABLE
    assert "Traceback" not in result.stderr


def test_health_wait_sees_a_server_come_up():
    port = free_port()
    with health_server_later(port, delay=1.0):
        result = run_cli("health", "--wait", "30", target=f"127.0.0.1:{port}")
    assert (result.returncode, result.stdout) == (0, "SERVING\n")
