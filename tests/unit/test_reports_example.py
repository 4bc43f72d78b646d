"""Unit tests of the ``reports`` example (examples/reports)."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import re
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "reports"
if str(EXAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_DIR))

import report_pdf  # noqa: E402
from report_pdf import build_report  # noqa: E402


def _build(user_id: int, pace: float = 0.0) -> tuple[bytes, int, list[int]]:
    calls: list[int] = []
    pdf, pages = build_report(user_id, calls.append, pace)
    return pdf, pages, calls


def _text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def test_report_is_a_valid_multi_page_pdf() -> None:
    pdf, pages, _ = _build(42)
    assert pdf.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == pages
    assert pages >= 2
    meta = reader.metadata
    assert meta is not None
    assert meta.title == "Annual Sales Report - user 42"


def test_report_has_title_page_tables_and_charts() -> None:
    data = report_pdf.make_report_data(42)
    texts = _text(_build(42)[0])
    everything = "\n".join(texts)
    assert "Annual Sales Report" in texts[0]
    assert "User #42" in texts[0]
    assert data.company in texts[0]
    for heading in ("Summary", "Monthly orders", "Monthly revenue", "Revenue by region"):
        assert heading in everything
    # Chart titles are drawn as text in the charts' drawings.
    assert "Units ordered per month" in everything
    assert "Monthly revenue by product" in everything
    for product in data.products:
        assert product in everything
    # The grand total of the revenue table.
    assert f"€{data.total_revenue:,.0f}" in everything


def test_report_draws_vector_charts() -> None:
    data = report_pdf.make_report_data(7)
    reader = PdfReader(io.BytesIO(_build(7)[0]))
    pages = {page.extract_text(): page.get_contents() for page in reader.pages}

    def ops(title: str, op: bytes) -> int:
        [content] = [c for text, c in pages.items() if title in text]
        assert content is not None
        return len(re.findall(rb" " + op + rb"\s", content.get_data()))

    months, products = len(report_pdf.MONTHS), len(data.products)
    # Stacked bars: one rectangle per product and month (plus the table's).
    assert ops("Monthly revenue by product", b"re") >= months * products
    # Lines: one segment per product between consecutive months.
    assert ops("Units ordered per month", b"l") >= (months - 1) * products


def test_report_is_deterministic_per_user() -> None:
    first, pages_1, _ = _build(1234)
    again, pages_2, _ = _build(1234)
    other, _, _ = _build(1235)
    assert first == again
    assert pages_1 == pages_2
    assert first != other
    assert report_pdf.make_report_data(1234) == report_pdf.make_report_data(1234)
    assert report_pdf.make_report_data(1234) != report_pdf.make_report_data(1235)


@pytest.mark.parametrize("user_id", [0, 1, 99, 2**31, report_pdf.MAX_USER_ID])
def test_report_builds_for_edge_user_ids(user_id: int) -> None:
    pdf, pages, _ = _build(user_id)
    assert len(PdfReader(io.BytesIO(pdf)).pages) == pages >= 2
    assert f"User #{user_id}" in _text(pdf)[0]


def test_progress_increases_monotonically_to_100() -> None:
    _, _, calls = _build(5)
    assert len(calls) >= 5
    assert calls[0] == 0
    assert calls[-1] == 100
    assert all(isinstance(p, int) and 0 <= p <= 100 for p in calls)
    assert all(a < b for a, b in itertools.pairwise(calls))


def test_pace_is_respected_and_spread_over_the_build() -> None:
    pace = 1.0
    stamps: list[tuple[float, int]] = []
    start = time.monotonic()
    pdf, _ = build_report(8, lambda pct: stamps.append((time.monotonic() - start, pct)), pace)
    elapsed = time.monotonic() - start
    assert pdf.startswith(b"%PDF-")
    assert pace * 0.95 <= elapsed < pace + 1.5
    # Progress arrives while the build runs, not all at the end: each
    # checkpoint is reached at about its share of the total time.
    for at, pct in stamps:
        assert at >= pace * pct / 100 - 0.05, (at, pct)
    halfway = next(at for at, pct in stamps if pct >= 50)
    assert halfway < pace * 0.9


def test_pace_zero_is_fast() -> None:
    start = time.monotonic()
    _build(3)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("user_id", "pace", "error"),
    [
        (-1, 0.0, ValueError),
        (report_pdf.MAX_USER_ID + 1, 0.0, ValueError),
        (True, 0.0, TypeError),
        ("42", 0.0, TypeError),
        (1, -0.5, ValueError),
        (1, float("nan"), ValueError),
        (1, float("inf"), ValueError),
    ],
)
def test_build_report_rejects_bad_arguments(user_id: Any, pace: Any, error: type[Exception]) -> None:
    calls: list[int] = []
    with pytest.raises(error):
        build_report(user_id, calls.append, pace)
    assert calls == []


# --------------------------------------------------------------------------
# tasks.py, with a stand-in for the kvern worker API
# --------------------------------------------------------------------------


class FakeKvern(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("kvern")
        self.progress_calls: list[tuple[int, str | None]] = []
        self.artifacts: list[tuple[str, bytes, str | None]] = []

    def progress(self, pct: int, message: str | None = None) -> None:
        self.progress_calls.append((pct, message))

    def save_artifact(self, name: str, data: bytes, content_type: str | None = None) -> str:
        self.artifacts.append((name, data, content_type))
        return name


@pytest.fixture
def fake_kvern(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKvern]:
    fake = FakeKvern()
    monkeypatch.setitem(sys.modules, "kvern", fake)
    yield fake


@pytest.fixture
def tasks(fake_kvern: FakeKvern, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """tasks.py imported as ``tasks`` (as the worker does), against the fake kvern."""
    spec = importlib.util.spec_from_file_location("tasks", EXAMPLE_DIR / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tasks", module)
    spec.loader.exec_module(module)
    return module


def test_task_is_registered_under_the_name_the_spec_and_clients_use(tasks: types.ModuleType) -> None:
    assert tasks.generate_heavy_report.name == "tasks.generate_heavy_report"
    assert tasks.app.main == "reports"
    assert '[tasks."tasks.generate_heavy_report"]' in (EXAMPLE_DIR / "kvern.toml").read_text(encoding="utf-8")


def test_task_reports_progress_and_saves_the_pdf(tasks: types.ModuleType, fake_kvern: FakeKvern) -> None:
    result = tasks.generate_heavy_report(11, seconds=0)
    assert json.loads(json.dumps(result)) == result
    assert len(fake_kvern.artifacts) == 1
    name, data, content_type = fake_kvern.artifacts[0]
    assert (name, content_type) == ("report.pdf", "application/pdf")
    assert data == build_report(11, lambda _: None, 0)[0]
    assert result == {
        "user_id": 11,
        "pages": len(PdfReader(io.BytesIO(data)).pages),
        "bytes": len(data),
        "artifact": "report.pdf",
        "message": "Report Ready",
    }
    pcts = [pct for pct, _ in fake_kvern.progress_calls]
    assert len(pcts) >= 5
    assert pcts[0] == 0 and pcts[-1] == 100
    assert all(0 <= p <= 100 for p in pcts)
    assert pcts == sorted(pcts)
    assert fake_kvern.progress_calls[-1][1] == "Report Ready"


def test_task_default_takes_about_three_seconds(tasks: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Check the default without waiting for it: the pace handed to build_report.
    seen: list[float] = []

    def fake_build(user_id: int, on_progress: Any, pace: float) -> tuple[bytes, int]:
        seen.append(pace)
        on_progress(100)
        return b"%PDF-fake", 1

    monkeypatch.setattr(tasks, "build_report", fake_build)
    assert tasks.generate_heavy_report(3)["bytes"] == len(b"%PDF-fake")
    assert seen == [3.0]


def test_task_accepts_digit_strings(tasks: types.ModuleType) -> None:
    assert tasks.generate_heavy_report(" 77 ", seconds=0)["user_id"] == 77


@pytest.mark.parametrize(
    ("user_id", "seconds", "error"),
    [
        ("abc", 0, ValueError),
        ("-3", 0, ValueError),
        (-3, 0, ValueError),
        (None, 0, TypeError),
        (1.5, 0, TypeError),
        (False, 0, TypeError),
        (1, -1, ValueError),
        (1, 10_000, ValueError),
        (1, "3", TypeError),
    ],
)
def test_task_rejects_bad_arguments(
    tasks: types.ModuleType,
    fake_kvern: FakeKvern,
    user_id: Any,
    seconds: Any,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        tasks.generate_heavy_report(user_id, seconds=seconds)
    assert fake_kvern.artifacts == []
