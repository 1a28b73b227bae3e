"""`cyserve generate` and `cyserve tokenize` against a server with mutual TLS and a bearer token:
the flags and their environment variables, and what a refused token, a refused or missing
certificate, and an unusable PEM file say (the flag to fix, no traceback)."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import clean_env, cyserve_command, serving
from service.support import FakeEngine, FakeTokenizer

from cyserve.service.tls import server_credentials

from .support import make_pki

TOKEN = "cli-token"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cyserve_command(), *args], env=clean_env(**env), capture_output=True, text=True,
                          encoding="utf-8", timeout=120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-pki")
    make_pki(folder)
    return folder


@pytest.fixture(scope="module")
def address(pki: Path) -> Iterator[str]:
    creds = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    with serving(FakeEngine(), credentials=creds, auth_token=TOKEN) as server:
        yield f"localhost:{server.port}"


def flags(pki: Path, token: str | None = TOKEN, cert: bool = True, ca: str = "ca.pem") -> list[str]:
    out = ["--tls-ca", str(pki / ca)]
    if cert:
        out += ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    return out + (["--token", token] if token is not None else [])


def assert_clean_failure(result: Any, status: int, *needles: str) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_generate_over_mutual_tls_with_a_token(address, pki):
    result = run_cli("generate", "--address", address, *flags(pki), "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hi there\n"


def test_the_flags_come_from_the_client_variables(address, pki):
    env = {"CYSERVE_ADDRESS": address, "CYSERVE_TLS_CA": str(pki / "ca.pem"), "CYSERVE_TOKEN": TOKEN,
           "CYSERVE_CLIENT_CERT": str(pki / "client.pem"), "CYSERVE_CLIENT_KEY": str(pki / "client.key")}
    result = run_cli("generate", "hi", **env)
    assert result.returncode == 0 and result.stdout == "Hi there\n", result.stderr
    wrong = run_cli("generate", "--token", "flag-wins", "hi", **env)
    assert_clean_failure(wrong, 1, "UNAUTHENTICATED")


def test_tokenize_asks_the_server_over_tls(address, pki):
    result = run_cli("tokenize", "--address", address, *flags(pki), "héllo")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == FakeTokenizer().encode("héllo")
    both = run_cli("tokenize", "--model", "/some/model.gguf", "--address", address, "x")
    assert_clean_failure(both, 2, "give one or the other")


@pytest.mark.parametrize("command", ["generate", "tokenize"])
def test_a_refused_token_names_the_flag(address, pki, command):
    for token in ("wrong", None):
        result = run_cli(command, "--address", address, *flags(pki, token=token), "hi")
        assert_clean_failure(result, 1, "UNAUTHENTICATED", "refused the call's bearer token",
                             "--token (env CYSERVE_TOKEN)")


def test_a_certificate_from_another_ca_names_the_flag(address, pki, tmp_path):
    make_pki(tmp_path)
    result = run_cli("generate", "--address", address, *flags(tmp_path), "hi")
    assert_clean_failure(result, 1, "UNAVAILABLE", "TLS handshake failed", "--tls-ca")


def test_a_missing_client_certificate_names_the_flags(address, pki):
    result = run_cli("generate", "--address", address, *flags(pki, cert=False), "hi")
    assert_clean_failure(result, 1, "UNAVAILABLE", "without a certificate", "--tls-cert and --tls-key")


def test_plaintext_to_a_tls_server_points_to_tls_ca(address):
    result = run_cli("generate", "--address", address, "--timeout", "10", "hi")
    assert_clean_failure(result, 1, "UNAVAILABLE", "is `cyserve serve` running", "--tls-ca")


@pytest.mark.parametrize("problem, needle", [
    ("unreadable", "cannot read the TLS CA file '/nonexistent/ca.pem'"),
    ("not PEM", "is not a PEM file"),
    ("cert without key", "--tls-cert and --tls-key (env CYSERVE_CLIENT_CERT, CYSERVE_CLIENT_KEY) come together"),
    ("cert without CA", "a client certificate is for TLS: give --tls-ca"),
    ("empty token", "the token is empty"),
])
def test_unusable_tls_options_exit_2_naming_the_problem(pki, problem, needle):
    args = {"unreadable": ["--tls-ca", "/nonexistent/ca.pem"],
            "not PEM": ["--tls-ca", __file__],
            "cert without key": ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem")],
            "cert without CA": ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")],
            "empty token": ["--token", " "]}[problem]
    result = run_cli("generate", "--address", "localhost:1", *args, "hi")
    assert_clean_failure(result, 2, needle)
