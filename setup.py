"""Build: Cython/C extensions (with OpenMP) and protobuf/gRPC modules generated from protos/.

Every ``.pyx`` under ``cyserve/`` becomes one extension module. The C kernels in
``cyserve/kernels/cpu/csrc`` are compiled once into a static library (position-independent) that
every extension under ``cyserve/kernels/cpu`` links, so each kernel module carries its SIMD code
and scalar twin without compiling them six times.

Environment switches:
  CYSERVE_DEBUG=1     bounds checks and asserts back on, -O0 -g
  CYSERVE_ONLY=path   build only the .pyx files under that path (fast iteration)
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(ROOT, "protos")
KERNEL_CSRC = os.path.join("cyserve", "kernels", "cpu", "csrc")
DEBUG = os.environ.get("CYSERVE_DEBUG") == "1"


def generate_protos() -> None:
    """Generate cyserve/v1/*_pb2*.py from protos/ so `import cyserve.v1.generation_pb2` resolves."""
    protos = sorted(glob.glob(os.path.join(PROTO_ROOT, "cyserve", "v1", "*.proto")))
    if not protos:
        return
    from grpc_tools import protoc
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out_dir = os.path.join(ROOT, "cyserve", "v1")
    os.makedirs(out_dir, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {protos}")
    init = os.path.join(out_dir, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as fh:
            fh.write('"""Generated from protos/cyserve/v1 at build time. Do not edit."""\n')


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


COMPILE_ARGS = ["-fopenmp", "-fno-strict-aliasing"] + (["-O0", "-g"] if DEBUG else ["-O3"])
LINK_ARGS = ["-fopenmp"]
KERNEL_LIB = "cyserve_cpu_kernels"


def kernel_library() -> tuple[str, dict]:
    sources = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.c")))
    headers = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.h")))
    return (KERNEL_LIB, {"sources": sources, "include_dirs": [KERNEL_CSRC], "cflags": COMPILE_ARGS,
                         "obj_deps": {"": headers}})


class BuildExtWithKernels(build_ext):
    """Build the static kernel library first: `build_ext --inplace` and editable installs skip build_clib."""

    def run(self) -> None:
        self.run_command("build_clib")
        super().run()


def extensions() -> list[Extension]:
    only = os.environ.get("CYSERVE_ONLY", "cyserve")
    headers = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.h")))
    exts = []
    for pyx in sorted(glob.glob(os.path.join("cyserve", "**", "*.pyx"), recursive=True)):
        if not pyx.startswith(only):
            continue
        name = pyx[:-4].replace(os.sep, ".")
        is_kernel = pyx.startswith(os.path.join("cyserve", "kernels", "cpu"))
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[KERNEL_CSRC],
                depends=headers if is_kernel else [],
                extra_compile_args=COMPILE_ARGS,
                extra_link_args=LINK_ARGS,
            )
        )
    return exts


def cythonized() -> list[Extension]:
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "embedsignature": True,
    }
    return cythonize(extensions(), compiler_directives=directives, nthreads=0)


generate_protos()
setup(ext_modules=cythonized(), libraries=[kernel_library()], cmdclass={"build_py": BuildPyWithProtos, "build_ext": BuildExtWithKernels})
