"""docstrange's local OCR models: where they live, whether they are complete, how to fetch.

Scanned PDFs and images need docstrange's layout and table models (docling) plus
EasyOCR's detector and English recogniser. docstrange would download them on first use
(S3 without a timeout, then the Hugging Face hub) and leave empty folders behind when
that fails; our workers have no network, so we check for the files up front: when any
is missing, the bundled engine (readers/ocr.py) reads the pages instead; files that are present
but do not load answer FAILED_PRECONDITION with the command below. The layout under the
model dir:

    <dir>/layout/...        docstrange's layout model (model.safetensors)
    <dir>/tableformer/...   docstrange's table model (tm_config.json)
    <dir>/easyocr/model/    craft_mlt_25k.pth, english_g2.pth

Fetch them once, with network, at image build time:
    python -m zopilot_server.documents.ocr_models fetch --dir DIR
and check them (exit status 1 when incomplete):
    python -m zopilot_server.documents.ocr_models check --dir DIR

The image build runs this file as a plain script before the application is installed,
so it imports nothing from the package and only the standard library at module level.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

# Each required model: any one of these paths (docstrange accepts several layouts).
REQUIRED: dict[str, tuple[str, ...]] = {
    "layout": (
        "layout/model_artifacts/layout/model.safetensors",
        "layout/model.safetensors",
        "layout/layout/model.safetensors",
    ),
    "tableformer": (
        "tableformer/model_artifacts/tableformer/accurate/tm_config.json",
        "tableformer/tm_config.json",
        "tableformer/tableformer/accurate/tm_config.json",
    ),
    "easyocr-detector": ("easyocr/model/craft_mlt_25k.pth",),
    "easyocr-english": ("easyocr/model/english_g2.pth",),
}
FETCH_COMMAND = "python -m zopilot_server.documents.ocr_models fetch --dir {dir}"


def default_model_dir() -> Path:
    """docstrange's own default, resolved with the server's real HOME (workers get another)."""
    return Path.home() / ".cache" / "docstrange" / "models"


def resolve(model_dir: str) -> Path:
    return Path(model_dir).expanduser() if model_dir else default_model_dir()


def easyocr_dir(model_dir: Path) -> Path:
    return model_dir / "easyocr"


def missing(model_dir: Path) -> list[str]:
    """The required models that have none of their files under ``model_dir``."""
    return [
        name
        for name, candidates in REQUIRED.items()
        if not any((model_dir / candidate).is_file() for candidate in candidates)
    ]


def install_hint(model_dir: Path, absent: Sequence[str]) -> str:
    return (
        f"OCR (scanned PDFs, images) needs docstrange's local models, missing in "
        f"{model_dir}: {', '.join(absent)}. Install them where the network is reachable "
        f"with `{FETCH_COMMAND.format(dir=model_dir)}` (or build the image with the OCR "
        "model prefetch) and point --doc-model-dir / ZOPILOT_DOC_MODEL_DIR at that folder"
    )


def fetch(model_dir: Path) -> None:
    """Download the models (needs network; never called by the server itself)."""
    from docstrange.pipeline.model_downloader import ModelDownloader

    model_dir.mkdir(parents=True, exist_ok=True)
    absent = missing(model_dir)
    downloader = ModelDownloader(cache_dir=model_dir)
    for name, config in (
        ("layout", ModelDownloader.LAYOUT_MODEL),
        ("tableformer", ModelDownloader.TABLE_MODEL),
    ):
        if name in absent:
            # docstrange skips a model whose folder exists, even an empty one left by a
            # failed download: start from a clean folder.
            shutil.rmtree(model_dir / config["cache_folder"], ignore_errors=True)
            downloader._download_model(config, force=False, progress=False)
    if {"easyocr-detector", "easyocr-english"} & set(absent):
        import easyocr

        root = easyocr_dir(model_dir)
        easyocr.Reader(
            ["en"],
            gpu=False,
            model_storage_directory=str(root / "model"),
            user_network_directory=str(root / "user_network"),
            download_enabled=True,
            verbose=False,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zopilot_server.documents.ocr_models",
        description="Check or fetch docstrange's local OCR models.",
    )
    parser.add_argument("action", choices=("check", "fetch"))
    parser.add_argument(
        "--dir", default="", help="model directory (default: ~/.cache/docstrange/models)"
    )
    args = parser.parse_args(argv)
    model_dir = resolve(args.dir)
    if args.action == "fetch":
        fetch(model_dir)
    absent = missing(model_dir)
    if absent:
        print(install_hint(model_dir, absent), file=sys.stderr)
        return 1
    print(f"OCR models complete in {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
