"""The Python stubs of the contract: `cyserve/v1/*_pb2*.py` (and `.pyi`) generated from the .proto
files beside this one with grpcio-tools. The server's build (setup.py) and the client-only
distribution (clients/python) both call `generate`, so both ship the same generated code and none
of it is committed.

    python protos/python_stubs.py OUT_ROOT     writes OUT_ROOT/cyserve/v1/
"""
from __future__ import annotations

import glob
import os
import sys

PROTO_ROOT = os.path.dirname(os.path.abspath(__file__))
INIT_TEXT = '"""Generated from protos/cyserve/v1 at build time. Do not edit."""\n'


def proto_files() -> list[str]:
    """The contract's .proto files, sorted."""
    return sorted(glob.glob(os.path.join(PROTO_ROOT, "cyserve", "v1", "*.proto")))


def generate(out_root: str) -> list[str]:
    """Writes the messages, the gRPC stubs, type stubs and an __init__.py to out_root/cyserve/v1/
    (imported as `cyserve.v1`). Returns the .proto files used. Raises RuntimeError when protoc fails
    and ImportError without grpcio-tools."""
    protos = proto_files()
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}/cyserve/v1")
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out_dir = os.path.join(out_root, "cyserve", "v1")
    os.makedirs(out_dir, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    init = os.path.join(out_dir, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w", encoding="utf-8") as fh:
            fh.write(INIT_TEXT)
    return protos


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python protos/python_stubs.py OUT_ROOT")
    generate(sys.argv[1])
