"""`cyserve bench` is a client: it reaches servers through their APIs only, so loading it (and
making a gRPC backend) must not import the engine or the kernels."""
from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import cyserve.loadgen.main
from cyserve.loadgen.backends import GrpcBackend
GrpcBackend("127.0.0.1:1")
print(",".join(sorted(m for m in sys.modules if m.startswith("cyserve."))))
"""


def test_bench_imports_no_engine_code() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=120, check=True)
    modules = done.stdout.strip().split(",")
    assert "cyserve.loadgen.main" in modules and "cyserve.v1.generation_pb2" in modules
    assert not [m for m in modules if m.startswith(("cyserve.fastpath", "cyserve.kernels",
                                                    "cyserve.service"))]
