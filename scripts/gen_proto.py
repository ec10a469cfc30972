"""Generate the Python stubs (+ .pyi) and the documented descriptor sets from protos/.

One command for `make proto` and for the test that fails when the committed stubs are
stale. The path mapping ``zopilot_client/pb=protos/zopilot/v1`` makes the generated
imports package-relative (``from zopilot_client.pb import generation_pb2``); the
descriptor set keeps the comments, which server reflection serves to grpcurl.

The third-party protocols (protos/inference: KServe v2 / Triton, protos/fmaas: TGIS) are
server-only and go to ``server/zopilot_server/protocols/pb/<package>/``. Their modules
register into a private descriptor pool (``zopilot_server.protocols.pb.POOL``) instead of
protobuf's default one: tritonclient (or a client generated from the published TGIS
proto) defines the same message names, and two files defining one name in the default
pool make the second import fail, in any process that loads both (our own tests do).

protos/vllm (``vllm.grpc.engine``, smg-grpc-proto) is vendored unmodified: its
``vllm_engine.proto`` imports ``"common.proto"`` from its own folder, so it is generated
with that folder as the include root, and the generated imports are made package-relative
(as the published wheel does), into the same private pool.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "protos" / "zopilot" / "v1"
VIRTUAL = "zopilot_client/pb"
DESCRIPTOR_SET = "zopilot_v1.binpb"
PROTOCOLS = ("inference", "fmaas")  # protos/<package>/*.proto, served by the server only
PROTOCOLS_VIRTUAL = "zopilot_server/protocols/pb"
PROTOCOLS_DESCRIPTOR_SET = "protocols.binpb"
VLLM = "vllm"  # protos/vllm, generated with its own folder as the include root
_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2) as ", re.MULTILINE)
_DEFAULT_POOL = "_descriptor_pool.Default()"
_PRIVATE_POOL = "_protocols_pb.POOL"


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


def generate_protocols(out_root: Path) -> list[Path]:
    """Write the protocol stubs under ``out_root`` (the server/ directory); return them."""
    pb_root = out_root / PROTOCOLS_VIRTUAL
    includes, sources = [], []
    for package in PROTOCOLS:
        (pb_root / package).mkdir(parents=True, exist_ok=True)
        includes.append(f"-I{PROTOCOLS_VIRTUAL}/{package}={REPO / 'protos' / package}")
        names = sorted(p.name for p in (REPO / "protos" / package).glob("*.proto"))
        sources += [f"{PROTOCOLS_VIRTUAL}/{package}/{name}" for name in names]
    args = [
        "grpc_tools.protoc",
        *includes,
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        "--include_source_info",
        f"--descriptor_set_out={pb_root / PROTOCOLS_DESCRIPTOR_SET}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = [pb_root / PROTOCOLS_DESCRIPTOR_SET, *_generate_vllm(pb_root)]
    for package in (*PROTOCOLS, VLLM):
        for path in sorted((pb_root / package).iterdir()):
            if path.name == "__init__.py" or not path.is_file() or path.suffix == ".binpb":
                continue
            if path.name.endswith("_pb2.py"):
                _use_private_pool(path)
            if package == VLLM and path.suffix == ".py":
                path.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1 as ", path.read_text()))
            generated.append(path)
    return generated


def _generate_vllm(pb_root: Path) -> list[Path]:
    """protos/vllm into ``pb_root/vllm`` (include root: protos/vllm itself, so the file
    names are the published ones); return its descriptor set."""
    source = REPO / "protos" / VLLM
    out = pb_root / VLLM
    out.mkdir(parents=True, exist_ok=True)
    descriptor_set = out / "vllm.binpb"
    args = [
        "grpc_tools.protoc",
        f"-I{source}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "--include_source_info",
        f"--descriptor_set_out={descriptor_set}",
        *sorted(p.name for p in source.glob("*.proto")),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [descriptor_set]


def _use_private_pool(path: Path) -> None:
    """Point a generated ``_pb2.py`` at the private pool (see the module docstring)."""
    text = path.read_text()
    if _DEFAULT_POOL not in text:
        raise SystemExit(f"{path.name}: protoc no longer writes {_DEFAULT_POOL}; update gen_proto")
    import_line = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
    text = text.replace(
        import_line, import_line + "import zopilot_server.protocols.pb as _protocols_pb\n", 1
    )
    path.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))


if __name__ == "__main__":
    # gen_proto.py [CLIENT_DIR [SERVER_DIR]]: zopilot.v1 stubs, then the protocol stubs.
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "client"
    for path in generate(out):
        print(path.relative_to(out))
    server_out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "server"
    for path in generate_protocols(server_out):
        print(path.relative_to(server_out))
