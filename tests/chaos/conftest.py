"""The chaos suite's table: every scenario adds its row, printed in pytest's summary (even under capture)."""

from __future__ import annotations

from typing import Any

import pytest

ROWS: list[dict[str, Any]] = []


def render_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    terminalreporter.section("chaos: counts per scenario")
    for line in render_table(ROWS):
        terminalreporter.write_line(line)
