"""verify_env catches every kind of mismatch, and the dev environment passes it.

The verifier is the image's fail-fast gate, so each way an environment can drift from
constraints.txt is fed to it here (a fake installed-versions mapping, a fake torch
probe) and must come back as a failing row that names the package and the problem.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import verify_env
from support import REPO, load_script
from verify_env import (
    ConstraintsError,
    Profile,
    TorchBuild,
    check_cuda,
    check_versions,
    expectations,
    parse_constraints,
)

CONSTRAINTS = (REPO / "constraints.txt").read_text(encoding="utf-8")
IMAGE = expectations(CONSTRAINTS, Profile.IMAGE)
CUDA_BUILD = TorchBuild("2.5.1+cu124", "12.4", ("NVIDIA H100",))


def dev_constraints_text() -> str:
    """The dev/CI constraints, from the one script that makes them (no second swap here)."""
    return load_script("dev_constraints").dev_constraints(CONSTRAINTS)


def perfect_image() -> dict[str, str]:
    """What a correctly built image has installed: every pin, exactly."""
    return {pin.name: pin.version for pin in IMAGE.required}


def problems(rows: list[verify_env.Row]) -> dict[str, str]:
    return {row.check: row.problem for row in rows if not row.ok}


def test_a_correct_image_passes() -> None:
    assert problems(check_versions(IMAGE, perfect_image())) == {}


@pytest.mark.parametrize("pin", IMAGE.required, ids=lambda pin: pin.name)
def test_every_pin_is_verified(pin: verify_env.Pin) -> None:
    """Each pin of constraints.txt, wrong or missing, fails verification on its own."""
    wrong = {**perfect_image(), pin.name: "0.0.1"}
    assert problems(check_versions(IMAGE, wrong)) == {pin.name: "wrong version"}
    missing = {k: v for k, v in perfect_image().items() if k != pin.name}
    assert problems(check_versions(IMAGE, missing)) == {pin.name: "missing"}


@pytest.mark.parametrize(
    ("installed", "problem"),
    [
        ("2.5.1+cu121", "wrong build tag"),  # another CUDA build of the same release
        ("2.5.1", "wrong build tag"),  # PyPI's build, no tag
        ("2.5.1+cpu", "wrong build tag"),
        ("2.4.1+cu124", "wrong version"),
        ("2.5.1+cu124", ""),
    ],
)
def test_local_tags_must_match_exactly(installed: str, problem: str) -> None:
    rows = check_versions(IMAGE, {**perfect_image(), "torch": installed})
    assert problems(rows).get("torch", "") == problem


def test_dev_tools_need_not_be_in_the_image_but_must_match_if_there() -> None:
    assert verify_env.NOT_IN_IMAGE == ("grpcio-tools",)
    without = {k: v for k, v in perfect_image().items() if k != "grpcio-tools"}
    rows = check_versions(IMAGE, without)
    assert problems(rows) == {}
    assert any(r.check == "grpcio-tools" and "not installed" in r.status for r in rows)
    assert problems(check_versions(IMAGE, {**without, "grpcio-tools": "1.80.0"})) == {
        "grpcio-tools": "wrong version"
    }


def test_dev_profile_is_the_dev_swap_and_forbids_the_rest_of_the_gpu_stack() -> None:
    dev = expectations(dev_constraints_text(), Profile.DEV)
    installed = {pin.name: pin.version for pin in dev.required} | {"torch": "2.13.0+cpu"}
    assert dev.absent == ("torchvision", "torchaudio")
    assert problems(check_versions(dev, installed)) == {}
    assert problems(check_versions(dev, {**installed, "torchvision": "0.28.0"})) == {
        "torchvision": "must not be installed"
    }
    assert problems(check_versions(dev, {**installed, "torch": "2.5.1+cu124"})) == {
        "torch": "wrong version"
    }


@pytest.mark.parametrize(
    ("build", "gpu_expected", "expected"),
    [
        (CUDA_BUILD, True, {}),
        (TorchBuild("2.5.1+cu124", "12.4"), False, {}),  # docker build: no GPU exposed
        (
            TorchBuild("2.13.0+cpu", None),
            False,
            {"torch CUDA": "CUDA missing", "torch build tag": "wrong build tag"},
        ),
        (
            TorchBuild("2.5.1+cu121", "12.1"),
            False,
            {"torch CUDA": "wrong CUDA", "torch build tag": "wrong build tag"},
        ),
        (TorchBuild("2.5.1+cu124", "12.4"), True, {"GPU": "no GPU visible"}),
        (
            TorchBuild(None, None, error="ImportError: libcudnn.so.9"),
            False,
            {"torch import": "torch does not import"},
        ),
    ],
    ids=["gpu", "build-time", "cpu-build", "other-cuda", "gpu-hidden", "no-import"],
)
def test_cuda_checks(build: TorchBuild, gpu_expected: bool, expected: dict[str, str]) -> None:
    assert problems(check_cuda(build, "12.4", gpu_expected=gpu_expected)) == expected


def test_cuda_version_comes_from_the_torch_pin() -> None:
    assert verify_env.cuda_from_tag("2.5.1+cu124") == "12.4"
    assert verify_env.cuda_from_tag("2.8.0+cu128") == "12.8"
    assert verify_env.cuda_from_tag("2.13.0+cpu") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy>=1.26\n", "line 1"),
        ("numpy==1.26.4\nscipy==1.12.0\nNumPy==1.26.3\n", "pinned twice"),
        ("# nothing\n", "no pins"),
    ],
)
def test_constraints_must_be_exact_pins(text: str, message: str) -> None:
    with pytest.raises(ConstraintsError, match=message.replace("line 1", ":1:")):
        parse_constraints(text)


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    installed: dict[str, str],
    build: TorchBuild = CUDA_BUILD,
) -> tuple[int, str]:
    monkeypatch.setattr(verify_env, "installed_versions", lambda: installed)
    monkeypatch.setattr(verify_env, "probe_torch", lambda: build)
    monkeypatch.setattr(verify_env, "gpus_exposed", lambda: False)
    code = verify_env.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_fails_with_a_table_of_mismatches(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(CONSTRAINTS.replace("transformers==4.45.0", "transformers==4.46.0"))
    installed = {**perfect_image(), "torch": "2.5.1+cu121"}
    del installed["docstrange"]
    argv = ["--constraints", str(constraints), "--require-cuda"]
    code, out = run_cli(monkeypatch, capsys, argv, installed, TorchBuild("2.5.1+cu121", "12.1"))
    assert code == 1
    failed = [
        " ".join(line.split()) for line in out.split("FAILED: 5 mismatch(es):")[1].splitlines()
    ]
    assert set(failed) >= {
        "transformers 4.46.0 4.45.0 wrong version",
        "docstrange 1.1.6 - missing",
        "torch 2.5.1+cu124 2.5.1+cu121 wrong build tag",
        "torch CUDA 12.4 12.1 wrong CUDA",
        "torch build tag +cu124 +cu121 wrong build tag",
    }


def test_cli_passes_a_correct_image_and_expect_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    constraints = tmp_path / "c.txt"
    constraints.write_text(CONSTRAINTS)
    argv = ["--constraints", str(constraints), "--require-cuda"]
    code, out = run_cli(monkeypatch, capsys, argv, perfect_image())
    assert code == 0 and "OK:" in out and "NVIDIA H100" in out
    argv = ["--expect", "numpy==1.26.4", "--expect", "scipy==1.11.4"]
    code, out = run_cli(monkeypatch, capsys, argv, perfect_image())
    assert code == 1 and "scipy" in out.split("FAILED")[1]


def test_cli_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "c.txt"
    bad.write_text("torch>=2\n")
    code, out = run_cli(monkeypatch, capsys, ["--constraints", str(bad)], perfect_image())
    assert code == 2 and "exact pin" in out
    code, out = run_cli(monkeypatch, capsys, ["--constraints", str(tmp_path / "no")], {})
    assert code == 2 and "cannot check" in out
    with pytest.raises(SystemExit) as exited:
        verify_env.main(["--profile", "dev", "--require-cuda"])
    assert exited.value.code == 2


def test_make_verify_env_passes_on_the_dev_environment() -> None:
    """What CI runs: the dev profile against .venv, through the Makefile target."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", "verify-env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "profile dev" in done.stdout and "OK:" in done.stdout
    assert "torchvision" in done.stdout  # checked to be absent
