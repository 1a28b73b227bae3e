"""The CUDA kernels: a torch extension (`_C`, built only where CUDA exists) and their pure-torch twins.

`load()` returns the compiled extension or None; `require()` returns it or raises with what to do.
Importing this package never imports torch: the CPU serving image does not ship it.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

BUILD_HINT = ("build it on a machine with nvcc and a CUDA build of torch: "
              "CYSERVE_CUDA=1 pip install --no-build-isolation -e '.[cuda]' (see docs/cuda.md)")


class CudaUnavailableError(RuntimeError):
    """The CUDA path was asked for but cannot run here; the message says what is missing."""


def load() -> ModuleType | None:
    """The compiled extension, or None when it was not built (or torch is missing)."""
    try:
        import torch  # noqa: F401  (loads libtorch/libc10, which _C links against)

        return importlib.import_module("cyserve.kernels.cuda._C")
    except ImportError:
        return None


def cuda_available() -> bool:
    """True when torch sees a CUDA device and the extension is built: what `--device auto` picks.

    Looks for the built extension first, so a CPU deployment never pays for importing torch.
    """
    if importlib.util.find_spec("cyserve.kernels.cuda._C") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available()) and load() is not None


def require() -> ModuleType:
    """The extension, or CudaUnavailableError naming the missing piece."""
    try:
        import torch
    except ImportError:
        raise CudaUnavailableError("--device cuda needs torch: pip install -e '.[cuda]'") from None
    if not torch.cuda.is_available():
        raise CudaUnavailableError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device (a CPU-only torch build, no "
            "GPU, or CUDA_VISIBLE_DEVICES hides it); use --device cpu")
    ext = load()
    if ext is None:
        raise CudaUnavailableError(f"--device cuda: the extension cyserve.kernels.cuda._C is not built; {BUILD_HINT}")
    return ext


DEVICES = ("auto", "cpu", "cuda")


def select_device(requested: str) -> str:
    """"cpu" or "cuda" for a `--device` value: auto = cuda when `cuda_available()`, else cpu.

    "cuda" that cannot run raises CudaUnavailableError saying why, instead of quietly serving on
    the CPU at a fraction of the expected speed.
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested == "cuda":
        require()
    return requested
