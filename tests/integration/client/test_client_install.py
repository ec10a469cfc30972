"""zopilot-client stands alone: it installs into an empty venv without torch and works.

Other services install only the client, so it must never need the server's stack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv

import pytest
from support import REPO

# (grpc itself imports grpc_tools / grpc_health when they are installed: not ours to avoid.)
HEAVY = ("torch", "transformers", "numpy", "docstrange", "zopilot_server")


def test_importing_the_client_and_cli_loads_no_server_dependency():
    """Checked in the dev venv, where all of them are installed and could leak in."""
    code = (
        "import sys, zopilot_client, zopilot_client.cli;"
        f"leaked = [m for m in {HEAVY!r} if m in sys.modules];"
        "assert not leaked, leaked"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_pip_install_in_an_empty_venv_gives_a_working_zopilot(tiny_server, tmp_path):
    # Build from a copy: pip builds in-tree and would leave build/ and egg-info behind.
    source = tmp_path / "client"
    shutil.copytree(
        REPO / "client",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python, zopilot = env_dir / "bin" / "python", env_dir / "bin" / "zopilot"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(source)], check=True, timeout=300)

    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.lower()  # fmt: skip
    assert "torch" not in installed and "transformers" not in installed
    probe = "import importlib.util as u, zopilot_client; assert u.find_spec('torch') is None"
    subprocess.run([str(python), "-c", probe], check=True, timeout=60)

    result = subprocess.run(
        [str(zopilot), "--target", tiny_server.target, "generate", "Hello", "--max-new-tokens=5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
