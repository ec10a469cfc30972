"""Print constraints.txt with the image's CUDA torch pins swapped for the dev CPU build.

Dev machines and CI install exactly the image's versions except torch: the image takes
torch/torchvision/torchaudio 2.5.1+cu124 from the cu124 index, dev machines take the CPU
torch 2.13.0 that lies on disk (any other version downloads gigabytes) and no
torchvision/torchaudio at all (FACTS.md: PyPI's torchvision breaks next to it).
"""

from __future__ import annotations

import re
import sys

DEV_TORCH = "torch==2.13.0"
_GPU_STACK = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*==", re.IGNORECASE)


def dev_constraints(text: str) -> str:
    """Return ``text`` with the GPU stack pins replaced by the dev torch pin."""
    lines = [line for line in text.splitlines() if not _GPU_STACK.match(line)]
    lines.append(f"{DEV_TORCH}  # dev/CI: CPU build on disk (scripts/dev_constraints.py)")
    return "\n".join(lines) + "\n"


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "constraints.txt"
    with open(path, encoding="utf-8") as fh:
        sys.stdout.write(dev_constraints(fh.read()))


if __name__ == "__main__":
    main()
