"""Check that the installed packages are exactly the versions pinned in constraints.txt.

``python docker/verify_env.py`` is the image's fail-fast gate: the Dockerfile copies it to
/opt/zopilot/verify_env.py and runs it after every install step, and CI runs it against
the dev environment (``make verify-env``). It lives with the image's tooling, not in the
server package, because it runs before the application is installed. It exits 0 when
everything matches, 1 with a table of mismatches, and 2 when it cannot run (unreadable
constraints file, a line that is not an exact pin).

Profiles:

* ``image`` checks constraints.txt as it is: every ``==`` pin must be installed at exactly
  that version. A pin with a local tag (``torch==2.5.1+cu124``) needs the same tag
  installed: a CPU or cu121 build of the same public version is a mismatch. Pins listed
  in ``NOT_IN_IMAGE`` are dev/CI tools that requirements.txt never installs: if present
  they must still match.
* ``dev`` checks the constraints that dev machines and CI install, as printed by
  scripts/dev_constraints.py (the one place that swaps the CUDA torch stack for the CPU
  torch on disk): every pin must be installed, and the GPU-stack packages that file no
  longer pins must be absent, since PyPI's torchvision breaks imports next to that torch
  (FACTS.md). ``make verify-env`` pipes one into the other.

``--require-cuda`` also checks the torch build itself: its CUDA version (12.4, read from
the ``+cu124`` tag of the torch pin), its build tag, and a visible GPU whenever the
kernel exposes one (``/dev/nvidia0``); ``--require-gpu`` insists on a GPU. At ``docker
build`` time no GPU is exposed, so the build checks the CUDA build and ``docker run
--gpus all ... --require-gpu`` checks the device.

This file uses only the standard library at import time (``packaging`` is imported when
versions are compared), so the Dockerfile can run it as a plain script before the
application is installed.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

CONSTRAINTS_ENV = "ZOPILOT_CONSTRAINTS"
PROFILE_ENV = "ZOPILOT_VERIFY_PROFILE"

# The packages that come from the CUDA index in the image. The dev/CI constraints keep
# only torch (the CPU build on disk); the others must then be absent.
GPU_STACK = ("torch", "torchvision", "torchaudio")
# Pinned for dev/CI only (`make proto` regenerates the stubs with it); requirements.txt
# never pulls it into the image. tests/integration/tooling/test_image_resolution.py
# proves this list against a resolution of the image's install.
NOT_IN_IMAGE = ("grpcio-tools",)

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*==\s*(?P<version>\S+)$")
_CUDA_TAG = re.compile(r"^cu(?P<major>\d+)(?P<minor>\d)$")


class ConstraintsError(ValueError):
    """The constraints file cannot be used: a line is not an exact ``name==version`` pin."""


class Profile(str, Enum):
    """Which environment is being verified (see the module docstring)."""

    IMAGE = "image"
    DEV = "dev"


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of a constraints file."""

    name: str  # normalised (PEP 503)
    version: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Expectations:
    """What one environment must contain, derived from the constraints file."""

    required: tuple[Pin, ...]  # installed, at exactly this version
    optional: tuple[Pin, ...] = ()  # need not be installed; if installed, must match
    absent: tuple[str, ...] = ()  # must not be installed


@dataclass(frozen=True)
class Row:
    """One line of the report: what was expected, what is there, and the verdict."""

    check: str
    expected: str
    installed: str
    problem: str = ""  # empty when the check passed
    note: str = ""  # shown instead of "ok" for a check that passed with a remark

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def status(self) -> str:
        return self.problem or self.note or "ok"


@dataclass(frozen=True)
class TorchBuild:
    """What the installed torch says about itself (a probe result tests can fake)."""

    version: str | None  # None: torch does not import
    cuda: str | None  # torch.version.cuda; None for a CPU build
    gpus: tuple[str, ...] = ()  # names of the devices torch can use
    error: str = ""  # why torch could not be imported or probed


def normalize(name: str) -> str:
    """PEP 503 name: ``Huggingface_Hub`` and ``huggingface-hub`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_constraints(text: str, source: str = "constraints.txt") -> list[Pin]:
    """Every pin of a constraints file; anything but ``name==version`` is an error.

    A reproducible image needs exact pins: a range in constraints.txt would let two builds
    of the same commit differ, so it is rejected here rather than silently not verified.
    """
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ConstraintsError(
                f"{source}:{number}: expected an exact pin 'name==version', got {raw.strip()!r}"
            )
        pin = Pin(normalize(match["name"]), match["version"], number)
        if pin.name in pins:
            raise ConstraintsError(
                f"{source}:{number}: {pin.name} is pinned twice "
                f"(first on line {pins[pin.name].line})"
            )
        pins[pin.name] = pin
    if not pins:
        raise ConstraintsError(f"{source}: no pins found")
    return list(pins.values())


def expectations(text: str, profile: Profile, source: str = "constraints.txt") -> Expectations:
    """What ``profile`` requires, from the text of its constraints file."""
    pins = parse_constraints(text, source)
    if profile is Profile.IMAGE:
        return Expectations(
            required=tuple(p for p in pins if p.name not in NOT_IN_IMAGE),
            optional=tuple(p for p in pins if p.name in NOT_IN_IMAGE),
        )
    pinned = {p.name for p in pins}
    return Expectations(required=tuple(pins), absent=tuple(n for n in GPU_STACK if n not in pinned))


def installed_versions() -> dict[str, str]:
    """Normalised name -> version of every distribution on sys.path (first one wins)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def compare(pinned: str, installed: str) -> str:
    """Why ``installed`` does not satisfy the pin ``==pinned``; empty when it does.

    PEP 440 ``==`` semantics: a pin with a local tag (``+cu124``) must match it exactly; a
    pin without one accepts any build of that version (the dev pin ``torch==2.13.0`` is
    satisfied by ``2.13.0+cpu``).
    """
    from packaging.version import InvalidVersion, Version

    try:
        want, have = Version(pinned), Version(installed)
    except InvalidVersion:
        return "" if pinned == installed else "wrong version"
    if want.local is None:
        return "" if Version(have.public) == want else "wrong version"
    if have == want:
        return ""
    if Version(have.public) == Version(want.public):
        return "wrong build tag"
    return "wrong version"


def check_versions(expected: Expectations, installed: Mapping[str, str]) -> list[Row]:
    """One row per pin (and per package that must be absent), in constraints order."""
    rows: list[Row] = []
    for pin, required in [(p, True) for p in expected.required] + [
        (p, False) for p in expected.optional
    ]:
        have = installed.get(pin.name)
        if have is None:
            rows.append(
                Row(pin.name, pin.version, "-", "missing")
                if required
                else Row(pin.name, pin.version, "-", note="not installed (dev/CI tool)")
            )
        else:
            rows.append(Row(pin.name, pin.version, have, compare(pin.version, have)))
    for name in expected.absent:
        have = installed.get(name)
        problem = "must not be installed" if have is not None else ""
        rows.append(Row(name, "absent", have or "-", problem))
    return rows


def cuda_from_tag(version: str) -> str | None:
    """``2.5.1+cu124`` -> ``12.4``; None when the version carries no CUDA tag."""
    local = version.partition("+")[2]
    match = _CUDA_TAG.match(local)
    return f"{int(match['major'])}.{match['minor']}" if match else None


def gpus_exposed(dev_glob: str = "/dev/nvidia[0-9]*") -> bool:
    """Whether the kernel hands this process an NVIDIA device (``docker run --gpus``)."""
    return bool(glob.glob(dev_glob))


def probe_torch() -> TorchBuild:
    """Import torch and ask it for its build and devices (imports torch: slow, so lazy)."""
    try:
        import torch

        gpus: tuple[str, ...] = ()
        if torch.cuda.is_available():
            gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return TorchBuild(torch.__version__, torch.version.cuda, gpus)
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding itself
        return TorchBuild(None, None, error=f"{type(exc).__name__}: {exc}")


def check_cuda(build: TorchBuild, want_cuda: str, *, gpu_expected: bool) -> list[Row]:
    """Rows for the CUDA build of torch and for the GPU it can see."""
    if build.version is None:
        return [Row("torch import", "imports", build.error or "-", "torch does not import")]
    tag = f"+cu{want_cuda.replace('.', '')}"
    have_tag = "+" + build.version.partition("+")[2] if "+" in build.version else "none"
    rows = [
        Row(
            "torch CUDA",
            want_cuda,
            build.cuda or "none (CPU build)",
            "" if build.cuda == want_cuda else "CUDA missing" if not build.cuda else "wrong CUDA",
        ),
        Row("torch build tag", tag, have_tag, "" if have_tag == tag else "wrong build tag"),
    ]
    seen = f"{len(build.gpus)}: {', '.join(build.gpus)}" if build.gpus else "none"
    if gpu_expected:
        rows.append(Row("GPU", ">= 1 visible", seen, "" if build.gpus else "no GPU visible"))
    else:
        rows.append(Row("GPU", "optional", seen, note="ok (no GPU exposed here)"))
    return rows


def check_ocr(binary: str = "tesseract") -> list[Row]:
    """The bundled OCR engine (documents/ocr.py) runs and has the languages it uses."""
    import shutil
    import subprocess

    path = shutil.which(binary)
    if path is None:
        return [Row("ocr engine", binary, "missing", "not on PATH (apt-get install tesseract-ocr)")]
    try:
        done = subprocess.run(
            [path, "--list-langs"], capture_output=True, text=True, timeout=30, check=False
        )
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return [Row("ocr engine", binary, "broken", f"does not run: {exc}")]
    lines = (version.stdout or version.stderr).strip().splitlines()
    rows = [Row("ocr engine", binary, lines[0] if lines else "?")]
    langs = set((done.stdout + done.stderr).split())
    for lang in ("eng", "osd"):
        rows.append(
            Row(
                f"ocr language {lang}",
                "installed",
                "installed" if lang in langs else "missing",
                "" if lang in langs else f"apt-get install tesseract-ocr-{lang}",
            )
        )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table that reads well in a ``docker build`` log."""
    header = ("package / check", "expected", "installed", "status")
    cells = [header, *((r.check, r.expected, r.installed, r.status) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[3]))
    return "\n".join(line.rstrip() for line in lines)


def report(rows: Sequence[Row], title: str, *, quiet: bool = False) -> str:
    """The full text printed by the CLI: the table, then the verdict and the mismatches."""
    problems = [r for r in rows if not r.ok]
    parts = [title]
    if not quiet:
        parts.append(format_table(rows))
    if problems:
        parts.append(f"FAILED: {len(problems)} mismatch(es):")
        parts.append(format_table(problems))
    else:
        parts.append(f"OK: {len(rows)} checks passed")
    return "\n".join(parts)


def _expect_args(specs: Iterable[str]) -> Expectations:
    """``--expect`` pins given on the command line, parsed like a constraints file."""
    return Expectations(required=tuple(parse_constraints("\n".join(specs), "--expect")))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verify_env.py",
        description=(
            "Verify installed package versions against constraints.txt (exit 0: all match, "
            "1: mismatches, 2: cannot check)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--constraints",
        default=os.environ.get(CONSTRAINTS_ENV, "constraints.txt"),
        help=f"the constraints file, '-' for stdin [env {CONSTRAINTS_ENV}]",
    )
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=os.environ.get(PROFILE_ENV, Profile.IMAGE.value),
        help="image: the image's constraints.txt; dev: the dev/CI constraints printed by "
        f"scripts/dev_constraints.py [env {PROFILE_ENV}]",
    )
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="NAME==VERSION",
        help="check these pins instead of a constraints file (for the Dockerfile's "
        "early layers, built before constraints.txt is copied)",
    )
    parser.add_argument(
        "--require-cuda",
        action="store_true",
        help="torch must be a CUDA build (version from the torch pin's +cuXYZ tag); a GPU "
        "must be visible whenever the kernel exposes one",
    )
    parser.add_argument("--require-gpu", action="store_true", help="--require-cuda + a GPU")
    parser.add_argument(
        "--require-ocr",
        action="store_true",
        help="the bundled OCR engine (tesseract with English and orientation data) must run",
    )
    parser.add_argument("--cuda-version", default="", help="expected CUDA (default: from pin)")
    parser.add_argument("--quiet", action="store_true", help="print only mismatches")
    return parser


def run(
    args: argparse.Namespace,
    installed: Mapping[str, str],
    torch_probe: Callable[[], TorchBuild],
) -> int:
    """Check, print the report, and return the exit status (separate from argv for tests)."""
    profile = Profile(args.profile)
    if args.expect:
        expected, source = _expect_args(args.expect), "--expect"
    else:
        source = "stdin" if args.constraints == "-" else args.constraints
        text = sys.stdin.read() if args.constraints == "-" else Path(source).read_text("utf-8")
        expected = expectations(text, profile, source)
    rows = check_versions(expected, installed)
    if args.require_cuda or args.require_gpu:
        torch_pin = next((p for p in expected.required if p.name == "torch"), None)
        want = args.cuda_version or (cuda_from_tag(torch_pin.version) if torch_pin else None)
        if not want:
            raise ConstraintsError(
                "--require-cuda: cannot tell which CUDA to require; pin torch with a +cuXYZ "
                "tag or pass --cuda-version"
            )
        gpu_expected = args.require_gpu or gpus_exposed()
        rows += check_cuda(torch_probe(), want, gpu_expected=gpu_expected)
    if getattr(args, "require_ocr", False):
        rows += check_ocr()
    mode = "expect" if args.expect else profile.value
    title = (
        f"zopilot verify_env: profile {mode}, pins from {source}, "
        f"python {platform.python_version()}"
    )
    print(report(rows, title, quiet=args.quiet))
    return 0 if all(r.ok for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.profile not in {p.value for p in Profile}:
        parser.error(f"{PROFILE_ENV}: unknown profile {args.profile!r}")
    if args.profile == Profile.DEV.value and (args.require_cuda or args.require_gpu):
        parser.error("the dev profile runs the CPU torch: --require-cuda/--require-gpu need image")
    try:
        return run(args, installed_versions(), probe_torch)
    except (OSError, ConstraintsError) as exc:
        print(f"verify_env: cannot check: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # the image installs packaging before the first check
        print(f"verify_env: cannot check: {exc} (pip install packaging)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
