"""The image's installs resolve for Python 3.10 / manylinux x86_64, and a broken pin fails.

One real ``pip install --dry-run`` of everything the Dockerfile installs (scripts/
image_resolution.py; it needs PyPI, as CI has, and downloads no CUDA: the torch stack is
a set of stand-in wheels). A second one, on a temporary copy of constraints.txt with a
version that does not exist, must fail and name that pin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import REPO
from verify_env import NOT_IN_IMAGE, Pin, Profile, expectations

sys.path.insert(0, str(REPO / "scripts"))

from image_resolution import Resolution, compare_resolution, resolve_image

CONSTRAINTS = REPO / "constraints.txt"
REQUIREMENTS = REPO / "requirements.txt"
DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def resolution() -> Resolution:
    return resolve_image(CONSTRAINTS, REQUIREMENTS, DOCKERFILE)


@pytest.mark.slow
def test_the_image_resolves_to_exactly_the_pins(resolution: Resolution) -> None:
    assert resolution.problems == []
    assert resolution.target.startswith("Python 3.10 / manylinux_2_35_x86_64")
    resolved = resolution.resolved
    expected = expectations(CONSTRAINTS.read_text(encoding="utf-8"), Profile.IMAGE)
    for pin in expected.required:  # every pin, exactly: torch is the +cu124 stand-in
        assert resolved[pin.name] == pin.version, pin
    for name in NOT_IN_IMAGE:  # the dev-only pins really are not part of the image
        assert name not in resolved
    assert resolved["sympy"] == "1.13.1"  # torch 2.5.1's own pin took part


@pytest.mark.slow
def test_a_pin_that_does_not_exist_fails_with_its_name(tmp_path: Path) -> None:
    broken = tmp_path / "constraints.txt"
    text = CONSTRAINTS.read_text(encoding="utf-8")
    broken.write_text(text.replace("transformers==4.45.0", "transformers==4.45.999"))
    result = resolve_image(broken, REQUIREMENTS, DOCKERFILE)
    assert len(result.problems) == 1
    assert "Python 3.10" in result.problems[0]
    assert "transformers==4.45.999" in result.problems[0]


def test_an_unknown_torch_needs_stand_in_metadata(tmp_path: Path) -> None:
    """Caught before pip runs: the stand-in wheel would otherwise carry made-up metadata."""
    changed = tmp_path / "constraints.txt"
    text = CONSTRAINTS.read_text(encoding="utf-8")
    changed.write_text(text.replace("torch==2.5.1+cu124", "torch==2.6.0+cu124"))
    result = resolve_image(changed, REQUIREMENTS, DOCKERFILE)
    assert result.problems and "no stand-in metadata for torch==2.6.0" in result.problems[0]


def test_every_required_pin_must_be_installed_by_the_image() -> None:
    required = [Pin("numpy", "1.26.4"), Pin("rich", "13.0.0")]
    optional = [Pin("grpcio-tools", "1.85.1")]
    resolved = {"numpy": "1.26.3", "grpcio-tools": "1.85.1"}
    problems = compare_resolution(required, optional, resolved, "T")
    assert problems == [
        "T: constraints.txt pins numpy==1.26.4 but pip resolves 1.26.3",
        "T: constraints.txt pins rich==13.0.0 but the image never installs it; drop the pin "
        "or list it in NOT_IN_IMAGE (verify_env.py)",
        "T: grpcio-tools is in NOT_IN_IMAGE but the image installs it; remove it from "
        "NOT_IN_IMAGE (verify_env.py) so that verify_env requires it",
    ]
