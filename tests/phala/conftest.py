"""Fixtures of the Phala Cloud client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from phala_test_support import MockCloud


@pytest.fixture
async def cloud() -> AsyncIterator[MockCloud]:
    """A client on a MockTransport; set ``cloud.handler`` or call ``cloud.answer(...)``."""
    mock = MockCloud()
    yield mock
    await mock.client.aclose()
