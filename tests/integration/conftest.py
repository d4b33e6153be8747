"""Fixtures of the integration tier: a real ProbeHandler process, and a Client to call it."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest

from schedulezero_handler import client as client_
from tests.support import processes

PROBE = "tests.support.handlers:ProbeHandler"


@pytest.fixture
def probe(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    """A ProbeHandler process of the test's own."""
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c
