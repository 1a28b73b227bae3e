"""The one gate of the GPU-only test modules: skip the module, with the reason, unless torch sees a
CUDA device and the extension is built."""
from types import ModuleType

import pytest


def require_gpu(what: str) -> ModuleType:
    """torch, or a module-level skip saying why `what` cannot run here."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[cuda]'")
    from cyserve.kernels.cuda import BUILD_HINT, load

    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device visible to torch {torch.__version__}: {what} runs only on a GPU",
                    allow_module_level=True)
    if load() is None:
        pytest.skip(f"the CUDA extension is not built; {BUILD_HINT}", allow_module_level=True)
    return torch
