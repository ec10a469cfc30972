"""The docs site (docs/, mkdocs.yml) and the README match the code.

- the site builds with ``mkdocs build --strict``: a broken link or anchor, or a page that
  nav leaves out, fails;
- docs/configuration.md's flag table is what scripts/config_table.py generates;
- every ```python block of the README and docs/ runs against a real server and prints
  what it promises;
- every ``make`` target, ``zopilot`` command, grpcurl method and ``--flag`` they name
  exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from support import REPO, load_script

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _page_name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _texts() -> dict[str, str]:
    return {_page_name(path): path.read_text(encoding="utf-8") for path in PAGES}


def test_mkdocs_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (tmp_path / "api" / "generation" / "index.html").is_file()


def test_configuration_table_matches_server_config():
    script = load_script("config_table")
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert script.page_table(page) == script.config_table(), (
        "run `python scripts/config_table.py --write`"
    )


def test_config_table_write_replaces_only_the_table():
    script = load_script("config_table")
    page = "intro\n<!-- config-table:begin (x) -->\n| old |\n<!-- config-table:end -->\nafter\n"
    assert script.with_table(page, "| new |") == page.replace("| old |", "| new |")
    with pytest.raises(ValueError, match="markers"):
        script.with_table("no markers here", "| new |")


# --- Code blocks that run. A ```python block is preceded by `<!-- snippet: NAME -->`
# and runs as written against a live server: the test only swaps the address the block
# names for the test server's and runs it in a folder holding a report.docx.
SNIPPET_TARGET = "127.0.0.1:50051"
_SNIPPET = re.compile(
    r"(?:<!-- snippet: (?P<name>[\w-]+) -->\n)?^```python\n(?P<code>.*?)^```$", re.S | re.M
)


def python_snippets(texts: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every python block of ``texts`` by its snippet name: (page, code)."""
    found: dict[str, tuple[str, str]] = {}
    for page, text in texts.items():
        for match in _SNIPPET.finditer(text):
            name = match["name"]
            assert name, f"{page}: a ```python block without a `<!-- snippet: NAME -->` line"
            assert name not in found, f"snippet {name!r} in both {found[name][0]} and {page}"
            found[name] = (page, match["code"])
    return found


def test_snippet_blocks_need_a_name():
    text = "<!-- snippet: a -->\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n"
    with pytest.raises(AssertionError, match="without a"):
        python_snippets({"page.md": text})
    assert python_snippets({"page.md": text.split("\n\n")[0]}) == {"a": ("page.md", "print(1)\n")}


def _finished(out: str) -> None:
    assert re.search(r"FinishReason\.(LENGTH|EOS_TOKEN) Usage\(input_tokens=\d+", out), out


def _library(out: str) -> None:
    _finished(out)
    assert "# Quarterly Report" in out and "Invoice Number: INV-2024-007" in out  # markdown
    assert out.rstrip().endswith("docx")  # detected_type


def _errors(out: str) -> None:
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["max_new_tokens", "top_p"], lines


def _triton(out: str) -> None:
    """Readiness, a unary infer, a stream whose last response is the final one."""
    lines = out.splitlines()
    assert lines[0] == "True True", lines
    streamed = [line for line in lines if line.startswith("1 ")]
    assert streamed and streamed[-1].endswith(" True"), lines
    assert all(line.endswith(" False") for line in streamed[:-1]), lines


def _adapter(out: str) -> None:
    assert out.rstrip().endswith(" support"), out  # Usage.adapter names who served it


EXPECTED: dict[str, Callable[[str], None]] = {
    "adapter": _adapter,
    "quick": _finished,
    "library": _library,
    "async": _finished,
    "errors": _errors,
    "triton": _triton,
}


# Snippets that need more than the tiny server run in the test of what they show.
RUN_ELSEWHERE = {"gateway-openai": "tests/integration/protocols/test_gateway_smg.py"}


def test_every_snippet_has_an_expectation():
    assert sorted(python_snippets(_texts())) == sorted([*EXPECTED, *RUN_ELSEWHERE])
    for where in RUN_ELSEWHERE.values():
        assert (REPO / where).exists()


@pytest.fixture(scope="module")
def snippet_workdir(tmp_path_factory):
    from documents_builders import docx_report

    workdir = tmp_path_factory.mktemp("snippets")
    (workdir / "report.docx").write_bytes(docx_report())
    return workdir


@pytest.fixture(scope="module")
def adapter_server(tiny_config, tiny_model_dir, tmp_path_factory):
    """The tiny model serving one LoRA adapter named "support" (docs/adapters.md)."""
    import dataclasses

    from model_builders import make_adapter
    from support import InProcessServer

    adapter = make_adapter(
        tiny_model_dir, tmp_path_factory.mktemp("support"), rank=4, targets=["q_proj"], seed=0
    )
    server = InProcessServer(dataclasses.replace(tiny_config, lora=(f"support={adapter}",)))
    yield server
    server.stop()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_snippet_runs(name, request, snippet_workdir):
    page, code = python_snippets(_texts())[name]
    assert SNIPPET_TARGET in code, f"{page}: snippet {name} names no {SNIPPET_TARGET}"
    server = request.getfixturevalue("adapter_server" if name == "adapter" else "tiny_server")
    result = subprocess.run(
        [sys.executable, "-c", code.replace(SNIPPET_TARGET, server.target)],
        cwd=snippet_workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{page}: snippet {name} failed:\n{result.stderr}"
    EXPECTED[name](result.stdout)


# --- Names the docs use exist in the code.
def _code_blocks(text: str) -> str:
    """The bash / console / plain code blocks of a page, joined, line continuations undone."""
    blocks = re.findall(r"^```(?:bash|)\n(.*?)^```$", text, re.S | re.M)
    return "\n".join(blocks).replace("\\\n", " ")


def test_make_targets_in_docs_exist():
    targets = subprocess.run(
        ["make", "-pn", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True
    ).stdout
    named = {
        target
        for text in _texts().values()
        for target in re.findall(r"`make ([a-z][a-z-]*)", text)
        + re.findall(r"^make ([a-z][a-z-]*)", _code_blocks(text), re.M)
    }
    assert {"run", "test", "docs"} <= named
    missing = sorted(t for t in named if not re.search(rf"^{t}:", targets, re.M))
    assert not missing, f"make targets the docs name but the Makefile lacks: {missing}"


def _cli_parsers() -> dict[str, argparse.ArgumentParser]:
    """The ``zopilot`` CLI's subcommand parsers, by command."""
    from zopilot_client import cli

    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def _cli_commands() -> set[str]:
    return set(_cli_parsers())


def test_cli_commands_in_docs_exist():
    commands = _cli_commands()
    named = {
        command
        for text in _texts().values()
        for command in re.findall(r"^(?:\S*/)?zopilot ([a-z]+)\b", _code_blocks(text), re.M)
    }
    assert {"generate", "parse", "info"} <= named
    assert named <= commands, f"zopilot commands that do not exist: {sorted(named - commands)}"


def _served_methods() -> set[str]:
    """Every fully-qualified method the server's protos define (and health, reflection)."""
    from grpc_health.v1 import health_pb2
    from zopilot_client.pb import documents_pb2, generation_pb2
    from zopilot_server.protocols.pb.fmaas import generation_pb2 as tgis_pb2
    from zopilot_server.protocols.pb.inference import grpc_service_pb2

    methods = set()
    for module in (health_pb2, documents_pb2, generation_pb2, tgis_pb2, grpc_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_grpcurl_methods_in_docs_exist():
    methods = _served_methods()
    named = {
        method
        for text in _texts().values()
        for method in re.findall(
            r"grpcurl [^\n]*?\b([a-z][\w.]+\.[A-Z]\w+/\w+)", _code_blocks(text)
        )
    }
    assert "zopilot.v1.Generation/GenerateStream" in named
    assert named <= methods, f"grpcurl methods that do not exist: {sorted(named - methods)}"


# Flags of other tools the docs show (docker, mkdocs), and the one flag they name as absent.
OTHER_TOOLS_FLAGS = {
    "--build-arg", "--dry-run", "--entrypoint", "--gpus", "--name", "--rm", "--secret",
    "--strict", "--receive-timeout-s",
}  # fmt: skip


# The Gateway API Inference Extension endpoint picker's flags docs/gateway.md maps our
# metrics onto (its binary is not on PyPI: checked by name against its docs, 2026-12-08).
EPP_FLAGS = {
    "--total-queued-requests-metric", "--total-running-requests-metric",
    "--kv-cache-usage-percentage-metric", "--cache-info-metric", "--model-server-metrics-port",
}  # fmt: skip


def _smg_flags() -> set[str]:
    """smg's own flags, from the pinned binary's --help (docs/gateway.md shows its command
    lines)."""
    smg = Path(sys.executable).with_name("smg")
    assert smg.exists(), "smg is a dev dependency (requirements-dev.txt): run `make install`"
    result = subprocess.run([str(smg), "launch", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))


def _known_flags() -> set[str]:
    """Server and CLI flags (with their --no- forms), and every "--flag" literal of our
    Python (benches, scripts, the image's verifier)."""
    from zopilot_server.config import ServerConfig

    flags = {
        flag
        for parser in _cli_parsers().values()
        for action in parser._actions
        for flag in action.option_strings
    }
    for field in dataclasses.fields(ServerConfig):
        flag = field.name.replace("_", "-")
        flags |= {f"--{flag}", f"--no-{flag}"}
    for folder in ("server", "client", "bench", "scripts", "docker"):
        for path in (REPO / folder).rglob("*.py"):
            flags |= set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", path.read_text()))
    return flags


def test_flags_in_docs_exist():
    known = _known_flags() | OTHER_TOOLS_FLAGS | EPP_FLAGS | _smg_flags()
    unknown = {
        f"{flag} ({page})"
        for page, text in _texts().items()
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)
        if flag not in known
    }
    assert not unknown, f"flags the docs name that no code defines: {sorted(unknown)}"


def test_metric_names_in_docs_exist():
    """Every ``zopilot_*`` name the docs give (metrics, gauges) is defined by the server."""
    source = "\n".join(path.read_text() for path in (REPO / "server").rglob("*.py"))
    named = {name for text in _texts().values() for name in re.findall(r"\bzopilot_\w+", text)}
    assert "zopilot_num_requests_waiting" in named
    # prometheus-client adds _total to a counter's name.
    missing = sorted(n for n in named if n not in source and n.removesuffix("_total") not in source)
    assert not missing, f"names the docs give that the server does not define: {missing}"


# The repository folders whose files the docs name by path.
_PATH = re.compile(r"`((?:bench|tests|tests_quant|scripts|deploy|protos|docker|docs)/[^`\s*{]*)`")


def test_file_paths_in_docs_exist():
    named = {path for text in _texts().values() for path in _PATH.findall(text)}
    assert "deploy/kubernetes/" in named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"paths the docs name that do not exist: {missing}"


# --- The benchmark figures: bench/plot.py draws them from the JSON committed beside them.
FIGURES = DOCS / "figures"


def _plot_module() -> ModuleType:
    """``bench/plot.py`` imported (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_plot", REPO / "bench" / "plot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_reads_the_benches_figures(tmp_path):
    plot = _plot_module()
    report = {
        "benchmark": "concurrency",
        "results": [
            {"n": 8, "grpc": {"tokens_per_s": 70.0}, "in_process": {"tokens_per_s": 80.0}},
            {"n": 1, "grpc": {"tokens_per_s": 19.0}, "in_process": {"tokens_per_s": 20.0}},
        ],
    }
    assert plot.tokens_per_s_series(report) == {
        "n": [1, 8],
        "grpc": [19.0, 70.0],
        "in_process": [20.0, 80.0],
    }
    figures = {"ttft_p50_s": 0.2, "ttft_p90_s": 0.3, "itl_p50_ms": 80, "itl_p99_ms": 140}
    serving = {
        "benchmark": "serving",
        "reuse_on": {"warm": {"requests": 24}, "chats": figures},
        "reuse_on_stall_1.5": {"chats": figures},
        "reuse_off": {"chats": figures},
    }
    labels = [row["label"] for row in plot.latency_rows(serving)]
    assert labels == ["chats", "chats (stall_1.5)"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(serving))
    with pytest.raises(ValueError, match=re.escape("not the JSON of bench/concurrency.py")):
        plot.load_report(wrong, "concurrency")
    with pytest.raises(ValueError, match="no prefix-cache-on"):
        plot.latency_rows({"benchmark": "serving", "reuse_off": {"chats": figures}})


def test_benchmarks_page_shows_every_figure_drawn_from_committed_json(tmp_path):
    plot = _plot_module()
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    for name in plot.FIGURES.values():
        assert f"](figures/{name})" in page, f"docs/benchmarks.md does not show {name}"
        assert (FIGURES / name).is_file(), name
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "plot.py"), "--out", str(tmp_path), "--label", "t",
         "--concurrency", str(FIGURES / "concurrency.json"),
         "--serving", str(FIGURES / "serving.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in plot.FIGURES.values():
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
