"""`kvern status` text: the stuck-jobs line appears only when there are some."""

from __future__ import annotations

from typing import Any

from kvern.report import render_status


def report(stuck: int) -> dict[str, Any]:
    return {
        "front_door": "http://127.0.0.1:8080",
        "processes": [],
        "queues": {},
        "jobs": {"queued": 0, "running": 2},
        "stuck_jobs": stuck,
        "pools": [],
    }


def test_stuck_jobs_are_counted_in_the_status_text() -> None:
    assert "2 running with no live attempt" in render_status(report(2))
    assert "no live attempt" not in render_status(report(0))
