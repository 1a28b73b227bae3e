"""The scheduling flags from the command line and CYSERVE_* variables to EngineConfig, and the
default KV cache size."""
import pytest

from cyserve.fastpath.engine_config import EngineConfig, default_kv_cache_bytes
from cyserve.service.cli import _parser
from cyserve.service.config import ServerConfig


def test_environment_reaches_the_engine_config():
    env = {"CYSERVE_PREFIX_CACHING": "off", "CYSERVE_MAX_NUM_BATCHED_TOKENS": "256", "CYSERVE_MAX_MODEL_LEN": "1024"}
    cfg = ServerConfig.from_env(env).engine_config()
    assert (cfg.enable_prefix_caching, cfg.max_num_batched_tokens, cfg.max_model_len) == (False, 256, 1024)


def test_unset_flags_keep_the_engine_defaults():
    cfg = ServerConfig.from_env({}).engine_config()
    default = EngineConfig(model_path=cfg.model_path)
    assert cfg == default and cfg.enable_prefix_caching


def test_cli_flags():
    args = _parser().parse_args(["serve", "--no-prefix-caching", "--max-num-batched-tokens", "64",
                                 "--max-model-len", "512"])
    assert (args.enable_prefix_caching, args.max_num_batched_tokens, args.max_model_len) == (False, 64, 512)
    assert _parser().parse_args(["serve"]).enable_prefix_caching is None, "unset: the environment may decide"


@pytest.mark.parametrize("var", ["CYSERVE_MAX_NUM_BATCHED_TOKENS", "CYSERVE_MAX_MODEL_LEN"])
def test_non_positive_limits_are_refused(var):
    with pytest.raises(ValueError, match=var.removeprefix("CYSERVE_").lower()):
        ServerConfig.from_env({var: "0"})


def test_default_kv_cache_is_bounded_by_need_and_by_the_cap():
    per_token = 23040  # SmolLM2-135M: 30 layers x 3 KV heads x 64 x 2 (K, V) x 2 bytes
    cfg = EngineConfig(model_path="m", max_num_seqs=2)
    assert default_kv_cache_bytes(cfg, per_token, 1024) <= 2 * 1024 * per_token
    big = default_kv_cache_bytes(EngineConfig(model_path="m"), per_token, 8192)
    assert 0 < big <= 1 << 30


def test_gpu_memory_utilization_from_flag_and_environment():
    from cyserve.service.cli import _parser

    assert _parser().parse_args(["serve", "--gpu-memory-utilization", "0.5"]).gpu_memory_utilization == 0.5
    cfg = ServerConfig.from_env({"CYSERVE_GPU_MEMORY_UTILIZATION": "0.75"}).engine_config()
    assert cfg.gpu_memory_utilization == 0.75
    assert ServerConfig.from_env({}).engine_config().gpu_memory_utilization == 0.9
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        ServerConfig.from_env({"CYSERVE_GPU_MEMORY_UTILIZATION": "1.2"})


def test_cuda_graphs_from_flag_and_environment():
    from cyserve.service.cli import _parser

    assert _parser().parse_args(["serve", "--cuda-graphs"]).cuda_graphs is True
    assert _parser().parse_args(["serve"]).cuda_graphs is None, "unset: the environment may decide"
    assert ServerConfig.from_env({"CYSERVE_CUDA_GRAPHS": "true"}).engine_config().cuda_graphs is True
    assert ServerConfig.from_env({}).engine_config().cuda_graphs is False
