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
from tests.multihost.stack import Stack, running_stack

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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, namespaces: None) -> Iterator[Stack]:
    """Three broker hosts, an application host and a worker host, shared by the scenarios; each scenario
    leaves it whole (a host it kills is started again)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with running_stack(tmp_path_factory.mktemp("stack")) as running:
            yield running
    finally:
        signal.signal(signal.SIGTERM, previous)
