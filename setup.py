"""Build: Cython/C extensions (with OpenMP) and protobuf/gRPC modules generated from protos/.

Every ``.pyx`` under ``cyserve/`` becomes one extension module. The C kernels in
``cyserve/kernels/cpu/csrc`` are compiled once into a static library (position-independent) that
every extension under ``cyserve/kernels/cpu`` links, so each kernel module carries its SIMD code
and scalar twin without compiling them six times.

The CUDA kernels (``cyserve/kernels/cuda/csrc``) become the torch extension
``cyserve.kernels.cuda._C`` only where they can: torch built with CUDA is importable and nvcc is
found. Anywhere else nothing about the build changes. pip's build isolation hides the installed
torch, so a GPU build is ``pip install --no-build-isolation -e '.[cuda]'`` (docs/cuda.md).

Environment switches:
  CYSERVE_DEBUG=1     bounds checks and asserts back on (Cython's and C's: -UNDEBUG), -O0 -g; switching
                      between debug and release regenerates and recompiles everything (build/cyserve-build-mode)
  CYSERVE_ONLY=path   build only the .pyx files under that path (fast iteration)
  CYSERVE_CUDA=1|0    force the CUDA extension on (fail if it cannot build) or off; unset = detect
  CYSERVE_CUDA_ARCHS  SM versions to compile for, ';'-separated (default "80;90": A100, H100;
                      PTX of the last one is embedded too, so newer GPUs JIT it)
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(ROOT, "protos")
KERNEL_CSRC = os.path.join("cyserve", "kernels", "cpu", "csrc")
CUDA_CSRC = os.path.join("cyserve", "kernels", "cuda", "csrc")
CUDA_EXTENSION = "cyserve.kernels.cuda._C"
DEBUG = os.environ.get("CYSERVE_DEBUG") == "1"


def generate_protos() -> None:
    """Generate cyserve/v1/*_pb2*.py from protos/ (protos/python_stubs.py, which the client-only
    distribution in clients/python uses too) so `import cyserve.v1.generation_pb2` resolves."""
    sys.path.insert(0, PROTO_ROOT)
    try:
        import python_stubs
    finally:
        sys.path.remove(PROTO_ROOT)
    try:
        python_stubs.generate(ROOT)
    except RuntimeError as exc:
        sys.exit(str(exc))


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


# Python's own CFLAGS carry -DNDEBUG; a debug build undefines it so C asserts run too
COMPILE_ARGS = ["-fopenmp", "-fno-strict-aliasing"] + (["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"])
BUILD_MODE = "debug" if DEBUG else "release"
MODE_STAMP = os.path.join(ROOT, "build", "cyserve-build-mode")


def build_mode_changed() -> bool:
    """Whether the last build was of the other mode (or unknown). Cython and setuptools decide
    what to rebuild from timestamps alone, so a change of directives or flags needs a forced build."""
    try:
        with open(MODE_STAMP) as fh:
            return fh.read().strip() != BUILD_MODE
    except FileNotFoundError:
        return True


def record_build_mode() -> None:
    os.makedirs(os.path.dirname(MODE_STAMP), exist_ok=True)
    with open(MODE_STAMP, "w") as fh:
        fh.write(BUILD_MODE + "\n")
LINK_ARGS = ["-fopenmp"]
KERNEL_LIB = "cyserve_cpu_kernels"


def kernel_library() -> tuple[str, dict]:
    sources = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.c")))
    headers = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.h")))
    return (KERNEL_LIB, {"sources": sources, "include_dirs": [KERNEL_CSRC], "cflags": COMPILE_ARGS,
                         "obj_deps": {"": headers}})


def cuda_wanted() -> bool:
    """CYSERVE_CUDA=1/0 decides; unset: build when torch has CUDA and a CUDA toolkit is found."""
    flag = os.environ.get("CYSERVE_CUDA", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


def cuda_extension() -> Extension:
    try:
        import torch
        from torch.utils.cpp_extension import CUDAExtension
    except ImportError:
        sys.exit("CYSERVE_CUDA=1 but torch is not importable here: install torch with CUDA first, then "
                 "pip install --no-build-isolation -e '.[cuda]' (build isolation hides torch)")
    if torch.version.cuda is None:
        sys.exit(f"CYSERVE_CUDA=1 but torch {torch.__version__} is a CPU-only build, which cannot build CUDA "
                 "extensions: install a CUDA build of torch, or unset CYSERVE_CUDA")
    archs = [a.strip() for a in os.environ.get("CYSERVE_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    sources = sorted(glob.glob(os.path.join(CUDA_CSRC, "*.cu"))) + [os.path.join(CUDA_CSRC, "binding.cpp")]
    return CUDAExtension(
        CUDA_EXTENSION, sources, include_dirs=[os.path.join(ROOT, CUDA_CSRC)],
        depends=sorted(glob.glob(os.path.join(CUDA_CSRC, "*.h")) + glob.glob(os.path.join(CUDA_CSRC, "*.cuh"))),
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++20", *gencode]},
    )


def build_ext_class(cuda: bool) -> type:
    """torch's BuildExtension (it knows nvcc) when the CUDA extension is built, setuptools' otherwise."""
    base = build_ext
    if cuda:
        from torch.utils.cpp_extension import BuildExtension

        base = BuildExtension

    class BuildExtWithKernels(base):
        """Build the static kernel library first: `build_ext --inplace` and editable installs skip build_clib."""

        def run(self) -> None:
            if MODE_CHANGED:
                self.force = True
                self.distribution.get_command_obj("build_clib").force = True
            self.run_command("build_clib")
            super().run()
            if ONLY == "cyserve":  # a partial build leaves the other modules in the old mode
                record_build_mode()

    return BuildExtWithKernels


def extensions(cuda: bool) -> list[Extension]:
    only = os.environ.get("CYSERVE_ONLY", "cyserve")
    # BuildExtension gives every source -std=c++20 unless it names a standard; these are C
    c_std = ["-std=gnu17"] if cuda else []
    # the kernel sources too: every kernel extension links the static library built from them,
    # and setuptools would otherwise keep a module linked against the old library
    kernel_deps = sorted(glob.glob(os.path.join(KERNEL_CSRC, "*.[ch]")))
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
                depends=kernel_deps if is_kernel else [],
                extra_compile_args=COMPILE_ARGS + c_std,
                extra_link_args=LINK_ARGS,
            )
        )
    return exts


def cythonized(cuda: bool) -> list[Extension]:
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "embedsignature": True,
    }
    return cythonize(extensions(cuda), compiler_directives=directives, nthreads=0, force=MODE_CHANGED)


generate_protos()
MODE_CHANGED = build_mode_changed()
CUDA = cuda_wanted()
ONLY = os.environ.get("CYSERVE_ONLY", "cyserve")
EXT_MODULES = cythonized(CUDA)
if CUDA and CUDA_EXTENSION.replace(".", os.sep).startswith(ONLY):
    EXT_MODULES.append(cuda_extension())
setup(ext_modules=EXT_MODULES, libraries=[kernel_library()],
      cmdclass={"build_py": BuildPyWithProtos, "build_ext": build_ext_class(CUDA)})
