"""Fixtures shared by the engine's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from accompanist.engine.config import EngineConfig, Mode
from tests.engine.harness import Deployments


@pytest.fixture
async def mesh() -> AsyncIterator[Deployments]:
    """Roles a, b, c in fault-tolerant mode, each started with the code a test gives it."""
    m = Deployments(EngineConfig(mode=Mode.FAULT_TOLERANT, receive_timeout=30.0))
    yield m
    await m.stop_all()
