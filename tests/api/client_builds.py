"""Builds the Go and C++ clients (clients/go, clients/cpp) once per test session, in a temporary
folder, from Debian's packages only: Go in GOPATH mode over /usr/share/gocode with GOPROXY=off,
C++ with clients/cpp/Makefile. A missing toolchain fails with the packages to install."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PROTOS = ROOT / "protos"
GO_MODULE = "github.com/cyserve/cyserve/clients/go"
GOCODE = Path("/usr/share/gocode")

GO_PACKAGES = ("golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-genproto-dev "
               "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev protobuf-compiler")
CPP_PACKAGES = "g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc"


def _require(what: str, missing: list[str], packages: str) -> None:
    if missing:
        pytest.fail(f"the {what} client test cannot build: {', '.join(missing)} missing; "
                    f"install them with: apt-get install -y {packages}", pytrace=False)


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    assert done.returncode == 0, f"{what} failed:\n{done.stdout}\n{done.stderr}"


def build_go(workdir: Path) -> Path:
    """clients/go's cyserve-check, its stubs generated from protos/; returns the binary."""
    missing = [tool for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc") if shutil.which(tool) is None]
    missing += [f"{GOCODE / 'src' / package}" for package in (
        "google.golang.org/grpc", "google.golang.org/protobuf", "google.golang.org/genproto/googleapis/rpc",
        "github.com/golang/protobuf/ptypes") if not (GOCODE / "src" / package).is_dir()]
    _require("Go", missing, GO_PACKAGES)
    gopath = workdir / "gopath"
    source = gopath / "src" / GO_MODULE
    shutil.copytree(ROOT / "clients" / "go", source)
    _check(subprocess.run(["protoc", f"-I{PROTOS}", f"--go_out={gopath / 'src'}", f"--go-grpc_out={gopath / 'src'}",
                           "cyserve/v1/generation.proto"], capture_output=True, text=True, timeout=120), "protoc (Go)")
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:{GOCODE}", GOPROXY="off", GOFLAGS="",
               GOCACHE=os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build"))
    binary = workdir / "cyserve-check-go"
    _check(subprocess.run(["go", "build", "-o", str(binary), "./cmd/cyserve-check"], cwd=source, env=env,
                          capture_output=True, text=True, timeout=900), "go build")
    _check(subprocess.run(["go", "vet", "./..."], cwd=source, env=env, capture_output=True, text=True,
                          timeout=600), "go vet")
    return binary


def googleapis_protos() -> Path:
    """The folder holding google/rpc/*.proto: googleapis-common-protos (grpcio-status needs it) ships them."""
    import google.rpc

    for folder in google.rpc.__path__:
        if (Path(folder) / "error_details.proto").exists():
            return Path(folder).parents[1]
    pytest.fail("google/rpc/error_details.proto not found beside the google.rpc Python package: "
                "pip install googleapis-common-protos", pytrace=False)


def build_cpp(workdir: Path) -> Path:
    """clients/cpp's cyserve-check with clients/cpp/Makefile; returns the binary."""
    missing = [tool for tool in ("g++", "make", "pkg-config", "protoc", "grpc_cpp_plugin") if shutil.which(tool) is None]
    if not missing and subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"]).returncode != 0:
        missing.append("the grpc++ and protobuf pkg-config files")
    _require("C++", missing, CPP_PACKAGES)
    out = workdir / "cpp"
    _check(subprocess.run(["make", "-s", f"OUT={out}", f"GOOGLEAPIS={googleapis_protos()}", f"PROTOS={PROTOS}"],
                          cwd=ROOT / "clients" / "cpp", capture_output=True, text=True, timeout=900), "make (C++)")
    return out / "cyserve-check"
