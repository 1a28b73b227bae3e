"""The client-only distribution (clients/python): built from protos/ and cyserve/client alone,
installed with pip in a fresh virtual environment where no compiler works and nothing may be built
from source, it is pure Python, ships the very stubs the server package generates, needs neither
numpy nor torch, and its example runs against a server over mutual TLS with a token."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import serving
from service.support import FakeEngine

import cyserve
from cyserve.service.tls import server_credentials

from .support import make_pki

ROOT = Path(__file__).parents[2]
CLIENT = ROOT / "clients" / "python"
TOKEN = "distribution-token"


def _checkout_copy(folder: Path) -> Path:
    """What the client's build may read of a checkout, and nothing else."""
    shutil.copytree(CLIENT, folder / "clients" / "python", ignore=shutil.ignore_patterns("src", "build", "*.egg-info"))
    shutil.copytree(ROOT / "protos", folder / "protos", ignore=shutil.ignore_patterns("released"))
    shutil.copytree(ROOT / "cyserve" / "client", folder / "cyserve" / "client",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "clients" / "python"


def _no_compiler_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CYSERVE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(CC="/bin/false", CXX="/bin/false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with `pip install clients/python`; its python."""
    folder = tmp_path_factory.mktemp("client-dist")
    source = _checkout_copy(folder / "checkout")
    venv.create(folder / "venv", with_pip=True)
    python = folder / "venv" / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--only-binary=:all:", str(source)],
                          env=_no_compiler_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip install of the client distribution failed:\n{done.stdout}\n{done.stderr}"
    return python


def _site_packages(python: Path) -> Path:
    done = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def test_the_wheel_is_pure_python_with_the_servers_own_stubs(installed):
    site = _site_packages(installed)
    info = next(site.glob("cyserve_client-*.dist-info"))
    assert "Root-Is-Purelib: true" in (info / "WHEEL").read_text()
    assert "Tag: py3-none-any" in (info / "WHEEL").read_text()
    files = [line.split(",")[0] for line in (info / "RECORD").read_text().splitlines()]
    shipped = sorted(f for f in files if f.startswith("cyserve/") and "__pycache__" not in f)
    assert all(f.endswith((".py", ".pyi", "py.typed")) for f in shipped), shipped
    assert "cyserve/__init__.py" not in shipped, "the client must not own the server's package"
    assert {"cyserve/client/client.py", "cyserve/client/py.typed", "cyserve/v1/generation_pb2_grpc.py"} <= set(shipped)
    for name in ("generation_pb2.py", "generation_pb2_grpc.py", "generation_pb2.pyi"):
        assert (site / "cyserve" / "v1" / name).read_bytes() == (ROOT / "cyserve" / "v1" / name).read_bytes(), \
            f"cyserve/v1/{name} differs from the server's: both must come from protos/python_stubs.py"


def test_it_needs_neither_numpy_nor_torch(installed):
    code = "import cyserve.client, sys; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([str(installed), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "numpy" not in done.stdout and "torch" not in done.stdout
    for heavy in ("numpy", "torch"):
        assert subprocess.run([str(installed), "-c", f"import {heavy}"], capture_output=True).returncode != 0


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    pki = tmp_path_factory.mktemp("dist-pki")
    make_pki(pki)
    creds = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    with serving(FakeEngine(), credentials=creds, auth_token=TOKEN) as server:
        yield f"localhost:{server.port}", pki


def test_the_example_runs_over_mutual_tls_with_a_token(installed, secure_server):
    address, pki = secure_server
    env = dict(_no_compiler_env(), CYSERVE_ADDRESS=address, CYSERVE_TLS_CA=str(pki / "ca.pem"),
               CYSERVE_CLIENT_CERT=str(pki / "client.pem"), CYSERVE_CLIENT_KEY=str(pki / "client.key"),
               CYSERVE_TOKEN=TOKEN)
    done = subprocess.run([str(installed), str(CLIENT / "example.py"), "hello"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert done.stdout.startswith("Hi there\n[") and "refused: INVALID_ARGUMENT" in done.stdout
    assert "sampling.top_p" in done.stdout
    wrong = subprocess.run([str(installed), str(CLIENT / "example.py")], env=dict(env, CYSERVE_TOKEN="nope"),
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stdout, wrong.stdout


def test_the_sdist_builds_without_the_checkout(tmp_path):
    source = _checkout_copy(tmp_path / "checkout")
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=source,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (sdist,) = (tmp_path / "dist").glob("cyserve_client-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "wheels"), str(unpacked)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [w.name for w in (tmp_path / "wheels").iterdir()] == ["cyserve_client-0.1.0-py3-none-any.whl"]


def test_its_version_is_the_servers():
    declared = re.search(r'^version = "([^"]+)"', (CLIENT / "pyproject.toml").read_text(), re.M)
    assert declared and declared.group(1) == cyserve.__version__
