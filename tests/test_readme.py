"""The README matches the code: its commands exist, its configuration table is current."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import load_script

REPO = Path(__file__).resolve().parents[1]
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
