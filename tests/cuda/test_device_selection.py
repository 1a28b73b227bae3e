"""`--device auto|cpu|cuda`: what each picks here, and the error when cuda cannot run."""
import pytest

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.model.cpu_runner import CpuModelRunner
from cyserve.kernels.cuda import CudaUnavailableError, cuda_available, select_device
from cyserve.service.config import ServerConfig

HERE = "cuda" if cuda_available() else "cpu"


def test_auto_picks_cuda_only_where_it_can_run():
    assert select_device("auto") == HERE


def test_cpu_is_always_cpu():
    assert select_device("cpu") == "cpu"


def test_cuda_without_gpu_or_extension_says_what_is_missing():
    if HERE == "cuda":
        assert select_device("cuda") == "cuda"
        return
    with pytest.raises(CudaUnavailableError, match="--device cuda") as info:
        select_device("cuda")
    assert "--device cpu" in str(info.value) or "pip install" in str(info.value)


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select_device("tpu")


def test_server_config_carries_the_device():
    config = ServerConfig.from_env({"CYSERVE_DEVICE": "cpu"})
    assert config.engine_config().device == "cpu"
    assert ServerConfig.from_env({}).engine_config().device == "auto"  # the engine's default
    with pytest.raises(ValueError, match="device must be one of"):
        ServerConfig.from_env({"CYSERVE_DEVICE": "gpu"})


def test_engine_runs_on_the_device_auto_picks(engine):
    assert engine.device == HERE
    if HERE == "cpu":
        assert isinstance(engine.runner, CpuModelRunner)


def test_engine_refuses_cuda_it_cannot_run(model_path):
    if HERE == "cuda":
        pytest.skip("this machine can run --device cuda (covered by test_cuda_model.py)")
    with pytest.raises(ModelLoadError, match="--device cuda"):
        Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=8 << 20, device="cuda"))


def test_cli_device_flag():
    from cyserve.service.cli import _parser

    assert _parser().parse_args(["serve", "--device", "cpu"]).device == "cpu"
    assert _parser().parse_args(["serve"]).device is None, "unset: CYSERVE_DEVICE or the engine decides"
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--device", "gpu"])


NO_TORCH_SCRIPT = """
import sys
from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.model.gguf_loader import load_gguf
from cyserve.fastpath.tokenizer import Tokenizer
m = load_gguf(sys.argv[1])
for device in sys.argv[2:]:
    e = Engine(EngineConfig(model_path=m.path, kv_cache_bytes=8 << 20, device=device), m, Tokenizer.from_gguf(m.reader))
    assert e.device == "cpu", e.device
assert "torch" not in sys.modules, "the CPU serving path imported torch"
"""


def test_cpu_serving_path_never_imports_torch(model_path):
    """The CPU image ships no torch: --device cpu (and auto, where no extension is built) must not need it."""
    import importlib.util
    import os
    import subprocess
    import sys

    devices = ["cpu"] + (["auto"] if importlib.util.find_spec("cyserve.kernels.cuda._C") is None else [])
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, model_path, *devices], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
