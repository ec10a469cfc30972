"""Print constraints.txt with the image's CUDA torch pins swapped for the dev CPU build.

Dev machines and CI install exactly the image's versions except torch: the image takes
torch/torchvision/torchaudio 2.5.1+cu124 from the cu124 index, dev machines take the CPU
torch 2.13.0 that lies on disk (any other version downloads gigabytes) and no
torchvision/torchaudio at all (FACTS.md: PyPI's torchvision breaks next to it).

An optional second file (constraints-quant.txt for the quantization test environment)
overrides the pins of the packages it names; everything else stays as constraints.txt
says, so the two environments cannot drift apart where they are meant to agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DEV_TORCH = "torch==2.13.0"
_GPU_STACK = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*==", re.IGNORECASE)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==")


def _pinned(line: str) -> str | None:
    """The normalized package name a ``name==version`` line pins, else None."""
    match = _PIN.match(line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def dev_constraints(text: str, overrides: str = "") -> str:
    """Return ``text`` with the GPU stack pins replaced by the dev torch pin.

    Pins in ``overrides`` replace the pins of the same packages in ``text``; an override
    may not touch the GPU stack (any torch but the one on disk downloads gigabytes).
    """
    extra = [line for line in overrides.splitlines() if _pinned(line)]
    if any(_GPU_STACK.match(line) for line in extra):
        raise SystemExit("dev_constraints: an override must not pin torch/torchvision/torchaudio")
    replaced = {_pinned(line) for line in extra}
    lines = [
        line
        for line in text.splitlines()
        if not _GPU_STACK.match(line) and _pinned(line) not in replaced
    ]
    lines.extend(extra)
    lines.append(f"{DEV_TORCH}  # dev/CI: CPU build on disk (scripts/dev_constraints.py)")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``dev_constraints.py [constraints.txt [overrides.txt]]``: print the merged pins."""
    paths = sys.argv[1:] or ["constraints.txt"]
    texts = [Path(path).read_text(encoding="utf-8") for path in paths[:2]]
    sys.stdout.write(dev_constraints(*texts))


if __name__ == "__main__":
    main()
