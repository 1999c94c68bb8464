"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rangeserver import RangeServer

# --- range server fixtures (tests/rangeserver.py) ---------------------------


@pytest.fixture(scope="session")
def range_server() -> Iterator[RangeServer]:
    """One live range server for the whole session, stopped at the end."""
    with RangeServer() as srv:
        yield srv


@pytest.fixture
def server(range_server: RangeServer) -> RangeServer:
    """The session range server, with request log and fault counters cleared."""
    range_server.reset()
    return range_server


# --- end of range server fixtures --------------------------------------------
