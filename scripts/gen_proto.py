"""Generate the Python stubs (+ .pyi) and the documented descriptor set from protos/.

One command for `make proto` and for the test that fails when the committed stubs are
stale. The path mapping ``zopilot_client/pb=protos/zopilot/v1`` makes the generated
imports package-relative (``from zopilot_client.pb import generation_pb2``); the
descriptor set keeps the comments, which server reflection serves to grpcurl.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "protos" / "zopilot" / "v1"
VIRTUAL = "zopilot_client/pb"
DESCRIPTOR_SET = "zopilot_v1.binpb"


def generate(out_root: Path) -> list[Path]:
    """Write the generated files under ``out_root`` (the client/ directory); return them."""
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    pb_dir = out_root / VIRTUAL
    pb_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL}={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        "--include_source_info",
        f"--descriptor_set_out={pb_dir / DESCRIPTOR_SET}",
        *(f"{VIRTUAL}/{name}" for name in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in pb_dir.iterdir() if p.name != "__init__.py" and p.is_file())


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "client"
    for path in generate(out):
        print(path.relative_to(out))
