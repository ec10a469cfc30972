"""The API contract as other languages consume it: `buf lint` (STANDARD rules, the
exceptions listed with their reason in buf.yaml) and `buf breaking` wired to catch a
removed field. buf comes from the buf-bin package (requirements-dev.txt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

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


# `buf breaking` against the committed image of the published contract (`make
# proto-baseline` records it): a clean or shallow clone has it, unlike git history.
BASELINE = REPO / "protos" / "baseline" / "zopilot_v1.json"


def test_protos_do_not_break_the_published_contract() -> None:
    result = buf("breaking", "--against", str(BASELINE))
    assert result.returncode == 0, (
        result.stdout + result.stderr + "\nA breaking change to protos/: clients generated "
        "from the baseline would fail. Make it additive, or record it on purpose with "
        "`make proto-baseline ALLOW_BREAKING=1` (and say so in the release notes)."
    )


def test_baseline_is_committed() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(BASELINE.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert tracked.returncode == 0, "commit protos/baseline: CI's clean clone needs it"


def test_baseline_catches_removals_and_renumbering(module_copy: Path) -> None:
    """The baseline holds the real services: removing a field, an enum value or an RPC,
    or renumbering a field, fails against it."""
    proto = module_copy / "protos" / "zopilot" / "v1" / "generation.proto"
    text = proto.read_text()
    edits = {
        "  string prompt = 2;\n": "",
        "  FINISH_REASON_SHUTDOWN = 6;\n": "",
        "  rpc Tokenize(TokenizeRequest) returns (TokenizeResponse);\n": "",
        "  bool ignore_eos = 19;": "  bool ignore_eos = 99;",
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    proto.write_text(text)
    result = buf("breaking", "--against", str(BASELINE), cwd=module_copy)
    assert result.returncode != 0
    for what in ('name "prompt"', 'enum value "6"', '"Tokenize"', '"19" with name "ignore_eos"'):
        assert what in result.stdout, (what, result.stdout)


def test_additions_do_not_break(module_copy: Path) -> None:
    """New fields, oneofs, enum values and RPCs are what the contract may grow by."""
    proto = module_copy / "protos" / "zopilot" / "v1" / "generation.proto"
    text = proto.read_text()
    # Anchors and numbers chosen not to collide with whatever the protos add next.
    additions = {
        "message GenerateRequest {\n": "  oneof test_only_choice {\n"
        "    string test_only_a = 900;\n    int32 test_only_b = 901;\n  }\n",
        "  FINISH_REASON_UNSPECIFIED = 0;\n": "  FINISH_REASON_TEST_ONLY = 900;\n",
        "message ModelInfo {\n": "  bool test_only_flag = 900;\n",
        "service Generation {\n": "  rpc TestOnly(GetModelInfoRequest) returns (ModelInfo);\n",
    }
    for anchor, added in additions.items():
        assert anchor in text, anchor
        text = text.replace(anchor, anchor + added)
    proto.write_text(text)
    result = buf("breaking", "--against", str(BASELINE), cwd=module_copy)
    assert result.returncode == 0, result.stdout + result.stderr
