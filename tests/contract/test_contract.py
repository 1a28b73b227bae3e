"""The contract in protos/ is linted and checked against the last released one with the buf CLI
(npm's @bufbuild/buf, which ships the binary): fields are only ever added. The released contract is
protos/released/*.json, a buf image written at release time with
`buf build --exclude-source-info -o protos/released/cyserve-v1-<version>.json`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUF_DIR = Path(__file__).parent / "buf"
PROTO = ROOT / "protos" / "cyserve" / "v1" / "generation.proto"
RELEASED = sorted((ROOT / "protos" / "released").glob("cyserve-v1-*.json"))


@pytest.fixture(scope="module")
def buf() -> Path:
    binary = BUF_DIR / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        assert shutil.which("npm"), ("npm is not installed: the contract checks need the buf CLI from npm "
                                     "(apt-get install nodejs npm)")
        env = dict(os.environ, npm_config_cache=str(BUF_DIR / ".npm-cache"))
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BUF_DIR,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm install of @bufbuild/buf failed:\n{done.stderr}"
    return binary


def _run(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _module_copy(tmp_path: Path, edit) -> Path:
    """A copy of buf.yaml and protos/ whose generation.proto went through `edit`."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    proto = tmp_path / "protos" / "cyserve" / "v1" / "generation.proto"
    text = proto.read_text()
    changed = edit(text)
    assert changed != text, "the edit did not apply"
    proto.write_text(changed)
    return tmp_path


def test_the_contract_passes_lint(buf):
    done = _run(buf, "lint")
    assert done.returncode == 0, f"buf lint:\n{done.stdout}{done.stderr}"


def test_the_contract_keeps_the_released_one(buf):
    assert RELEASED, "no released contract in protos/released/"
    done = _run(buf, "breaking", "--against", str(RELEASED[-1]))
    assert done.returncode == 0, f"breaking changes against {RELEASED[-1].name}:\n{done.stdout}{done.stderr}"


def test_every_generator_has_its_file_options():
    text = PROTO.read_text()
    for option in ("go_package", "java_package", "java_multiple_files", "java_outer_classname",
                   "csharp_namespace", "php_namespace", "ruby_package", "objc_class_prefix"):
        assert re.search(rf"^option {option} = ", text, re.M), f"generation.proto lacks option {option}"


def test_adding_a_field_is_allowed(buf, tmp_path):
    module = _module_copy(tmp_path, lambda t: t.replace("  // 6-9: reserved (multi-part content).",
                                                        "  string refusal = 6;\n\n  // 7-9: reserved (multi-part content)."))
    done = _run(buf, "breaking", "--against", str(RELEASED[-1]), cwd=module)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("edit, complaint", [
    (lambda t: t.replace("  string cache_salt = 22;\n", ""), "deleted"),
    (lambda t: t.replace("string cache_salt = 22;", "string cache_salt = 23;"), "deleted"),
    (lambda t: t.replace("int32 priority = 21;", "int64 priority = 21;"), "type"),
    (lambda t: t.replace("string request_id = 20;", "string caller_id = 20;"), "name"),
    (lambda t: t.replace("  rpc Detokenize(", "  rpc Untokenize("), "deleted"),
    (lambda t: t.replace('option go_package = "', 'option go_package = "example.com/'), "go_package"),
])
def test_breaking_changes_are_caught(buf, tmp_path, edit, complaint):
    module = _module_copy(tmp_path, edit)
    done = _run(buf, "breaking", "--against", str(RELEASED[-1]), cwd=module)
    assert done.returncode != 0, "buf breaking accepted a breaking change"
    assert complaint in done.stdout.lower(), done.stdout
