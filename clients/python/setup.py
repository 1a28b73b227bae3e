"""Build of the client-only distribution: pure Python, generated from protos/ alone.

From a checkout, the sources are staged into src/ first: cyserve/v1 generated from ../../protos
by protos/python_stubs.py (the generator the server's build uses, so both ship the same code) and
cyserve/client copied from ../../cyserve/client (its one source). An sdist carries src/ as staged.
`cyserve` is a namespace package here: beside the server package it adds nothing new, and alone
it holds only cyserve.v1 and cyserve.client.
"""
from __future__ import annotations

import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROTOS = os.path.join(REPO, "protos")
SRC = os.path.join(HERE, "src")


def stage() -> None:
    """src/cyserve/{v1,client} from the checkout's protos/ and cyserve/client/."""
    sys.path.insert(0, PROTOS)
    try:
        import python_stubs
    finally:
        sys.path.remove(PROTOS)
    shutil.rmtree(os.path.join(SRC, "cyserve"), ignore_errors=True)
    try:
        python_stubs.generate(SRC)
    except RuntimeError as exc:
        sys.exit(str(exc))
    shutil.copytree(os.path.join(REPO, "cyserve", "client"), os.path.join(SRC, "cyserve", "client"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


if os.path.isfile(os.path.join(PROTOS, "python_stubs.py")):
    stage()
elif not os.path.isdir(os.path.join(SRC, "cyserve", "v1")):
    sys.exit("neither the checkout's protos/ (../../protos) nor staged sources (src/) were found: build the "
             "client from a cyserve checkout or from its sdist")

setup(packages=["cyserve.v1", "cyserve.client"], package_dir={"": "src"},
      package_data={"cyserve.v1": ["*.pyi"], "cyserve.client": ["py.typed"]}, include_package_data=False)
