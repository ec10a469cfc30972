"""The README matches the code: its commands exist, its configuration table is current."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import REPO, load_script

README = (REPO / "README.md").read_text()


def _config_table() -> str:
    return load_script("config_table").config_table()


def test_configuration_table_matches_server_config():
    match = re.search(
        r"<!-- config-table:begin[^>]*-->\n(.*?)\n<!-- config-table:end -->", README, re.S
    )
    assert match, "README lost its configuration table markers"
    assert match.group(1) == _config_table(), "run scripts/config_table.py and paste its output"


def test_the_two_setup_commands_are_make_targets():
    assert "make run" in README and "make test" in README
    targets = subprocess.run(
        ["make", "-pn", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True
    )
    for target in ("run", "test", "install", "proto", "check"):
        assert re.search(rf"^{target}:", targets.stdout, re.M), target


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_install_is_idempotent():
    """After `make install`, make considers it up to date: a second run does nothing."""
    result = subprocess.run(["make", "-q", "install"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, "make install would run again although nothing changed"


# The README's Python snippets run as written, against a live server: the test only
# swaps the address they name for the test server's and gives them a report.docx to parse.
README_TARGET = "127.0.0.1:50051"


def _python_blocks() -> dict[str, str]:
    """The README's ```python blocks, by what they show."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README, re.S | re.M)
    named = {}
    for block in blocks:
        kind = (
            "triton"
            if "tritonclient" in block
            else "async"
            if "AsyncClient" in block
            else "errors"
            if "except " in block
            else "library"
        )
        assert kind not in named, f"two README python blocks look like {kind!r}"
        named[kind] = block
    assert set(named) == {"library", "async", "errors", "triton"}, (
        "a README python block is untested"
    )
    return named


@pytest.fixture(scope="module")
def readme_snippet_run(tiny_server, tmp_path_factory):
    from documents_builders import docx_report

    workdir = tmp_path_factory.mktemp("readme")
    (workdir / "report.docx").write_bytes(docx_report())

    def run(kind: str) -> str:
        code = _python_blocks()[kind]
        assert README_TARGET in code, f"the {kind} snippet names no {README_TARGET}"
        result = subprocess.run(
            [sys.executable, "-c", code.replace(README_TARGET, tiny_server.target)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"README {kind} snippet failed:\n{result.stderr}"
        return result.stdout

    return run


def test_readme_library_snippet_runs(readme_snippet_run):
    out = readme_snippet_run("library")
    assert re.search(r"FinishReason\.(LENGTH|EOS_TOKEN) Usage\(input_tokens=\d+", out), out
    assert "# Quarterly Report" in out and "Invoice Number: INV-2024-007" in out  # markdown
    assert out.rstrip().endswith("docx")  # detected_type


def test_readme_async_snippet_runs(readme_snippet_run):
    out = readme_snippet_run("async")
    assert re.search(r"FinishReason\.(LENGTH|EOS_TOKEN) Usage\(input_tokens=\d+", out), out


def test_readme_error_snippet_prints_every_violation(readme_snippet_run):
    lines = readme_snippet_run("errors").splitlines()
    assert [line.split()[0] for line in lines] == ["max_new_tokens", "top_p"], lines


def test_readme_tritonclient_snippet_runs(readme_snippet_run):
    """The KServe v2 / Triton snippet: readiness, a unary infer, a stream ending final."""
    lines = readme_snippet_run("triton").splitlines()
    assert lines[0] == "True True", lines
    streamed = [line for line in lines if line.startswith("1 ")]
    assert streamed and streamed[-1].endswith(" True"), lines
    assert all(line.endswith(" False") for line in streamed[:-1]), lines
