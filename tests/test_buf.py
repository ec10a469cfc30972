"""The API contract as other languages consume it: `buf lint` (STANDARD rules, the
exceptions listed with their reason in buf.yaml) and `buf breaking` wired to catch a
removed field. buf comes from the buf-bin package (requirements-dev.txt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUF = shutil.which("buf", path=str(Path(sys.executable).parent))


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert BUF, "buf is installed by `make install` (buf-bin)"
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_lint_exception_says_why() -> None:
    text = (REPO / "buf.yaml").read_text()
    for rule in (
        "SERVICE_SUFFIX",
        "RPC_REQUEST_RESPONSE_UNIQUE",
        "RPC_REQUEST_STANDARD_NAME",
        "RPC_RESPONSE_STANDARD_NAME",
    ):
        before = text[: text.index(f"- {rule}")]
        assert before.rstrip().splitlines()[-1].lstrip().startswith("#"), rule


def test_per_language_package_options() -> None:
    for proto in sorted((REPO / "protos" / "zopilot" / "v1").glob("*.proto")):
        text = proto.read_text()
        for option in ("go_package", "java_package", "csharp_namespace", "php_namespace"):
            assert f"option {option} = " in text, (proto.name, option)


@pytest.fixture
def module_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def test_lint_catches_a_bad_name(module_copy: Path) -> None:
    proto = module_copy / "protos" / "zopilot" / "v1" / "generation.proto"
    proto.write_text(proto.read_text() + "\nmessage bad_name {}\n")
    result = buf("lint", cwd=module_copy)
    assert result.returncode != 0
    assert "bad_name" in result.stdout


def test_breaking_catches_a_removed_field(module_copy: Path) -> None:
    proto = module_copy / "protos" / "zopilot" / "v1" / "generation.proto"
    text = proto.read_text()
    assert "  string prompt = 2;\n" in text
    proto.write_text(text.replace("  string prompt = 2;\n", ""))
    result = buf("breaking", "--against", str(REPO), cwd=module_copy)
    assert result.returncode != 0
    assert "prompt" in result.stdout
