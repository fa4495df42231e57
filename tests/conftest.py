"""Shared fixtures: tiny real models on CPU (float32), seeded."""

from __future__ import annotations

import pytest
import torch

from models.wan.config import PRESETS
from models.wan.loader import build_model
from models.wan.model import CausalWanModel


@pytest.fixture(scope="session")
def nano() -> CausalWanModel:
    return build_model(PRESETS["nano"], seed=0)


@pytest.fixture(scope="session")
def tiny() -> CausalWanModel:
    return build_model(PRESETS["tiny"], seed=0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
