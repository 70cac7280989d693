"""Shared by every part of the suite: the Teleport compatibility check (tests/teleport_compat.py),
loaded by path because test modules cannot import each other under --import-mode=importlib."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def teleport_compat():
    spec = importlib.util.spec_from_file_location(
        "teleport_compat", Path(__file__).resolve().parent / "teleport_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
