"""The front door keeps its port across restarts of a state dir, unless another program took it meanwhile."""

from __future__ import annotations

import dataclasses
import socket

from kvern.runtime.instance import _front_door_port, free_port
from kvern.runtime_config import RuntimeConfig


def previous_run(port: int) -> RuntimeConfig:
    return RuntimeConfig(
        spec_path="kvern.toml",
        spec_snapshot="/tmp/x/spec.snapshot.toml",
        state_dir="/tmp/x",
        instance="x",
        front_door_port=port,
        store_url="sqlite://",
        broker_urls={},
        management_url=None,
        management_auth=None,
        private_broker=False,
    )


def test_a_free_previous_port_is_kept() -> None:
    port = free_port()
    lines: list[str] = []
    assert _front_door_port(previous_run(port), lines.append) == port
    assert lines == []


def test_a_taken_previous_port_is_replaced_and_said() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        lines: list[str] = []
        port = _front_door_port(previous_run(taken), lines.append)
    assert port != taken
    assert lines == [f"front door port {taken} is taken by another program: using {port} this time"]


def test_first_run_picks_a_free_port() -> None:
    lines: list[str] = []
    assert _front_door_port(None, lines.append) > 0
    assert _front_door_port(dataclasses.replace(previous_run(0)), lines.append) > 0
    assert lines == []
