"""Resolve the image's installs with pip for Python 3.10 / manylinux x86_64, download-free.

CI cannot build the image, but it can ask pip what the image's installs would resolve to:
``pip install --dry-run`` for the image's Python and platform, with every install of the
Dockerfile in one command line and constraints.txt applied. PyPI serves no torch here and
the real CUDA wheels are gigabytes, so the CUDA stack resolves to tiny stand-in wheels in
a ``--find-links`` folder that carry the real wheels' metadata. A pin that cannot resolve
for the image then fails ``make test`` in seconds instead of ``docker build`` in an hour.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dockerfile_recipe import Recipe, option, requirement_name

# The image's verifier lives with the image's tooling (docker/), run there as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))
from verify_env import (
    GPU_STACK,
    Pin,
    Profile,
    compare,
    expectations,
    normalize,
)

# glibc of the base image's OS: the newest manylinux tag its wheels may carry.
GLIBC_BY_OS = {"ubuntu20.04": 31, "ubuntu22.04": 35, "ubuntu24.04": 39}
# Requires-Dist of the real CUDA wheels, without the nvidia-*-cu12 and triton entries:
# those come with torch from the CUDA index, never from PyPI with requirements.txt. PyPI
# serves no torch here, so the stand-ins carry this metadata instead. A new torch pin
# needs its entry (copy it from the wheel's METADATA).
STANDIN_REQUIRES: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "2.5.1"): (
        "filelock",
        "typing-extensions>=4.8.0",
        "networkx",
        "jinja2",
        "fsspec",
        'sympy==1.13.1; python_version >= "3.9"',
        'setuptools; python_version >= "3.12"',
    ),
    ("torchvision", "0.20.1"): ("numpy", "torch==2.5.1", "pillow!=8.3.*,>=5.3.0"),
    ("torchaudio", "2.5.1"): ("torch==2.5.1",),
}
# The pip settings a developer may need to reach PyPI at all; every other PIP_* variable
# and pip config file is left out, so this machine's extra indexes, find-links and
# constraints cannot make the resolution differ from the image's.
PIP_ENV_KEPT = (
    "PIP_INDEX_URL",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_TRUSTED_HOST",
    "PIP_PROXY",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_CACHE_DIR",
)


@dataclass
class Resolution:
    """The outcome of the dry-run: problems, and what pip would install (name -> version)."""

    problems: list[str]
    resolved: dict[str, str]
    seconds: float
    target: str = ""


def write_standin(folder: Path, name: str, version: str) -> str | None:
    """A metadata-only wheel ``name==version`` in ``folder``; an error text if unknown."""
    public = version.partition("+")[0]
    requires = STANDIN_REQUIRES.get((name, public))
    if requires is None:
        return (
            f"no stand-in metadata for {name}=={public}: add its Requires-Dist to "
            "STANDIN_REQUIRES in scripts/image_checks.py (copy it from the wheel's METADATA)"
        )
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: image_checks\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files = {f"{dist_info}/METADATA": metadata, f"{dist_info}/WHEEL": wheel}
    record = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, content in {**files, f"{dist_info}/RECORD": record}.items():
            archive.writestr(path, content)
    return None


def platform_tags(base_image: str) -> list[str]:
    """The manylinux tags the base image's glibc accepts, newest first."""
    os_tag = base_image.rsplit("-", 1)[-1]
    if os_tag not in GLIBC_BY_OS:
        raise ValueError(f"unknown glibc for {base_image!r}: add {os_tag} to GLIBC_BY_OS")
    minors = range(GLIBC_BY_OS[os_tag], 16, -1)
    legacy = ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [f"manylinux_2_{m}_x86_64" for m in minors] + legacy


def pip_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in PIP_ENV_KEPT}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_errors(output: str, limit: int = 25) -> str:
    """pip's explanation, from its first ERROR line, without the generic advice."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), 0)
    kept = [
        line
        for line in lines[start:]
        if line.strip() and not re.match(r"\s*(To fix this|\d\. (loosen|remove))", line)
    ]
    return "\n".join(kept[-limit:])


def image_requirements(recipe: Recipe, constraints: Path, requirements: Path) -> list[str]:
    """What the Dockerfile's dependency installs ask for, as one pip command line."""
    args: list[str] = []
    for install in recipe.installs:
        if install.installs_app or "--no-deps" in install.args:
            continue
        args += [spec for spec in install.packages if requirement_name(spec)]
        if option(install.args, "-r", "--requirement"):
            args += ["-r", str(requirements)]
    return ["-c", str(constraints), *args]


def resolve_image(
    constraints: Path,
    requirements: Path,
    dockerfile: Path,
    *,
    timeout: float = 300,
) -> Resolution:
    """Resolve the image's installs with pip for its Python and platform, download-free.

    One dry-run resolves everything the Dockerfile installs with dependencies (build
    tools, NumPy/SciPy, the torch stack, requirements.txt, all with constraints.txt); a
    second one the ``--no-deps`` installs. The CUDA stack resolves to stand-in wheels that
    carry the real wheels' metadata. The result is then held to the image profile of
    verify_env: every pin it requires must resolve to exactly its version.
    """
    started = time.monotonic()
    recipe = Recipe.read(dockerfile.read_text(encoding="utf-8"))
    python = recipe.args.get("PYTHON_VERSION", "")
    try:
        platforms = platform_tags(recipe.args.get("CUDA_IMAGE", ""))
    except ValueError as exc:
        return Resolution([str(exc)], {}, 0.0)
    target = f"Python {python} / {platforms[0]}"
    expected = expectations(constraints.read_text(encoding="utf-8"), Profile.IMAGE)
    with tempfile.TemporaryDirectory(prefix="image-resolve-") as tmp:
        links = Path(tmp, "links")
        links.mkdir()
        missing = [
            error
            for pin in expected.required
            if pin.name in GPU_STACK and (error := write_standin(links, pin.name, pin.version))
        ]
        if missing:
            return Resolution(missing, {}, 0.0, target)
        common = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        common += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        common += ["--abi", "cp" + python.replace(".", ""), "--no-input"]
        common += [f"--platform={tag}" for tag in platforms]
        common += ["--disable-pip-version-check", "--find-links", str(links)]
        no_deps = [
            spec
            for install in recipe.installs
            if "--no-deps" in install.args and not install.installs_app
            for spec in install.packages
        ]
        runs = [("with dependencies", image_requirements(recipe, constraints, requirements))]
        if no_deps:
            runs.append(("--no-deps", ["--no-deps", "-c", str(constraints), *no_deps]))
        resolved: dict[str, str] = {}
        for number, (what, args) in enumerate(runs):
            report = Path(tmp, f"report-{number}.json")
            command = [*common, "--target", str(Path(tmp, "target")), "--report", str(report)]
            try:
                done = subprocess.run(
                    [*command, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,  # in order: pip explains a conflict on stdout
                    text=True,
                    timeout=timeout,
                    env=pip_environment(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return Resolution([f"{target}: pip timed out after {timeout:.0f} s"], {}, 0, target)
            if done.returncode != 0:
                return Resolution(
                    [
                        f"{target} resolution of requirements.txt with constraints.txt "
                        f"({what}) failed; the image's pip would fail the same way:\n"
                        + pip_errors(done.stdout)
                    ],
                    resolved,
                    time.monotonic() - started,
                    target,
                )
            for item in json.loads(report.read_text(encoding="utf-8"))["install"]:
                resolved[normalize(item["metadata"]["name"])] = item["metadata"]["version"]
    problems = compare_resolution(expected.required, expected.optional, resolved, target)
    return Resolution(problems, resolved, time.monotonic() - started, target)


def compare_resolution(
    required: Sequence[Pin], optional: Sequence[Pin], resolved: Mapping[str, str], target: str
) -> list[str]:
    """Every required pin resolves to its version; a NOT_IN_IMAGE pin does not resolve."""
    problems = []
    for pin in required:
        have = resolved.get(pin.name)
        if have is None:
            problems.append(
                f"{target}: constraints.txt pins {pin} but the image never installs it; "
                "drop the pin or list it in NOT_IN_IMAGE (verify_env.py)"
            )
        elif compare(pin.version, have):
            problems.append(f"{target}: constraints.txt pins {pin} but pip resolves {have}")
    for pin in optional:
        if pin.name in resolved:
            problems.append(
                f"{target}: {pin.name} is in NOT_IN_IMAGE but the image installs it; remove "
                "it from NOT_IN_IMAGE (verify_env.py) so that verify_env requires it"
            )
    return problems
