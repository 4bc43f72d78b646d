"""Fixtures for the multihost tests: a `network` of namespace hosts, removed afterwards whatever happens.

Pytest runs fixture finalizers on failure and on Ctrl-C; SIGTERM is turned into the same KeyboardInterrupt so a
stopped CI job cleans up too. A run killed outright (SIGKILL) leaves its namespaces behind: the next run's
`Network.create` removes them (their tag names a pid that no longer exists).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.multihost.netns import Network, namespaces_supported

pytestmark = pytest.mark.multihost


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt("SIGTERM")


@pytest.fixture(scope="session")
def namespaces() -> None:
    """Skip (with the reason) where namespaces cannot be made: not root, or a sandbox without CAP_NET_ADMIN."""
    reason = namespaces_supported()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def network(namespaces: None) -> Iterator[Network]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    net = Network.create()
    try:
        yield net
    finally:
        net.close()
        signal.signal(signal.SIGTERM, previous)
