"""Shared fixtures: tiny PolyCoder-shaped models built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from model_factory import build_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 layers, hidden 64: fast; for behaviour tests."""
    return build_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that a long prompt takes a while: for cancellation tests."""
    return build_model(tmp_path_factory.mktemp("slow-model"), layers=6, hidden=384, heads=6)
