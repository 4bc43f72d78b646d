"""Build the multi-page PDF report of the ``reports`` example.

This module is pure: it knows nothing about Celery or kvern, so it can be
unit tested on its own. :func:`build_report` makes up a year of (synthetic,
deterministic) sales data for a user, lays it out with reportlab -- a title
page, a summary, tables and charts -- and returns the PDF bytes and the
number of pages.

The data come from ``random.Random(user_id)``, and the PDF is written in
reportlab's *invariant* mode (no creation date, fixed document id), so the
same user id always gives byte-identical PDFs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.linecharts import HorizontalLineChart
from reportlab.graphics.charts.piecharts import Pie
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import (
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

__all__ = ["MAX_USER_ID", "ReportData", "build_report", "make_report_data"]

#: Largest accepted user id (a signed 64-bit database key).
MAX_USER_ID = 2**63 - 1

YEAR = 2024
MONTHS: tuple[str, ...] = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
REGIONS: tuple[str, ...] = ("North", "South", "East", "West")

# (name, base unit price in EUR)
_CATALOG: tuple[tuple[str, float], ...] = (
    ("Espresso beans 1 kg", 24.90),
    ("Ceramic mug", 9.50),
    ("Pour-over kettle", 49.00),
    ("Burr grinder", 129.00),
    ("Paper filters x100", 4.20),
    ("Milk frother", 34.90),
    ("Travel tumbler", 19.90),
    ("Cold brew jar", 27.50),
    ("Tea sampler", 15.00),
    ("Digital scale", 39.00),
    ("Cleaning tablets", 11.90),
    ("Barista apron", 22.00),
)
_FIRST_NAMES = ("Ada", "Bram", "Chloe", "Dario", "Elin", "Farid", "Greta", "Hugo")
_LAST_NAMES = ("Andersen", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Novak")
_COMPANIES = ("Roastery", "Coffee Bar", "Tea House", "Bistro", "Kiosk", "Deli")
_CITIES = ("Oslo", "Lisbon", "Ghent", "Turin", "Gdansk", "Utrecht", "Brno")
# Mild seasonality: more coffee in winter, a bump before Christmas.
_SEASON = (1.15, 1.05, 1.0, 0.95, 0.9, 0.85, 0.8, 0.85, 0.95, 1.05, 1.2, 1.45)

_PALETTE = (
    colors.HexColor("#2f6db5"),
    colors.HexColor("#e07b39"),
    colors.HexColor("#3a9b5c"),
    colors.HexColor("#c0392b"),
    colors.HexColor("#8e5ea2"),
)
_HEADER_BG = colors.HexColor("#243447")
_ZEBRA_BG = colors.HexColor("#eef2f7")
_TOTAL_BG = colors.HexColor("#d9e2ec")
_N_PRODUCTS = len(_PALETTE)


@dataclass(frozen=True)
class ReportData:
    """A year of synthetic sales data for one user (one customer account)."""

    user_id: int
    customer: str
    company: str
    city: str
    products: tuple[str, ...]
    unit_prices: tuple[float, ...]
    #: ``orders[p][m]``: units of product ``p`` ordered in month ``m``.
    orders: tuple[tuple[int, ...], ...]
    #: ``region_share[p][r]``: fraction of product ``p`` shipped to region ``r``.
    region_share: tuple[tuple[float, ...], ...]

    def revenue(self, product: int, month: int) -> float:
        return self.orders[product][month] * self.unit_prices[product]

    def product_orders(self, product: int) -> int:
        return sum(self.orders[product])

    def product_revenue(self, product: int) -> float:
        return sum(self.revenue(product, m) for m in range(len(MONTHS)))

    def month_orders(self, month: int) -> int:
        return sum(self.orders[p][month] for p in range(len(self.products)))

    def month_revenue(self, month: int) -> float:
        return sum(self.revenue(p, month) for p in range(len(self.products)))

    @property
    def total_orders(self) -> int:
        return sum(self.product_orders(p) for p in range(len(self.products)))

    @property
    def total_revenue(self) -> float:
        return sum(self.product_revenue(p) for p in range(len(self.products)))


def _check_user_id(user_id: int) -> None:
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise TypeError(f"user_id must be an int, not {type(user_id).__name__}")
    if not 0 <= user_id <= MAX_USER_ID:
        raise ValueError(f"user_id must be between 0 and {MAX_USER_ID}, got {user_id}")


def make_report_data(user_id: int) -> ReportData:
    """Generate the user's data; the same ``user_id`` always gives the same data."""
    _check_user_id(user_id)
    rng = random.Random(user_id)
    customer = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    city = rng.choice(_CITIES)
    company = f"{customer.split()[1]} {rng.choice(_COMPANIES)}"
    picked = rng.sample(range(len(_CATALOG)), _N_PRODUCTS)
    products = tuple(_CATALOG[i][0] for i in picked)
    # A customer-specific discount of 0-15 %.
    discount = 1.0 - rng.randint(0, 15) / 100
    unit_prices = tuple(round(_CATALOG[i][1] * discount, 2) for i in picked)
    orders: list[tuple[int, ...]] = []
    for price in unit_prices:
        # Cheap items sell more; each product has its own trend over the year.
        base = rng.uniform(40.0, 120.0) * (30.0 / (price + 10.0)) + 5.0
        trend = rng.uniform(-0.03, 0.05)
        orders.append(
            tuple(
                max(0, round(base * _SEASON[m] * (1.0 + trend * m) * rng.uniform(0.8, 1.2))) for m in range(len(MONTHS))
            )
        )
    region_share: list[tuple[float, ...]] = []
    for _ in products:
        weights = [rng.uniform(0.5, 2.0) for _ in REGIONS]
        total = sum(weights)
        region_share.append(tuple(w / total for w in weights))
    return ReportData(
        user_id=user_id,
        customer=customer,
        company=company,
        city=city,
        products=products,
        unit_prices=unit_prices,
        orders=tuple(orders),
        region_share=tuple(region_share),
    )


# --------------------------------------------------------------------------
# Pacing and progress
# --------------------------------------------------------------------------


class _Pacer:
    """Report progress at checkpoints, spreading ``total`` seconds over them.

    Checkpoint ``pct`` is reached no earlier than ``total * pct / 100`` seconds
    after the start: if the real work got there sooner, the pacer sleeps for
    the difference. In a real application that time would be spent waiting
    for slow database queries; here the sleep stands in for them. The whole
    build therefore takes about ``max(total, cpu time)``.
    """

    def __init__(
        self,
        total: float,
        on_progress: Callable[[int], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._total = total
        self._on_progress = on_progress
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._last = -1

    def reach(self, pct: int) -> None:
        if not self._last < pct <= 100:
            raise ValueError(f"progress must increase: {self._last} -> {pct}")
        if self._total > 0:
            remaining = self._start + self._total * pct / 100 - self._clock()
            if remaining > 0:
                self._sleep(remaining)
        self._last = pct
        self._on_progress(pct)


# --------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------


def _eur(value: float) -> str:
    return f"€{value:,.2f}"


def _eur0(value: float) -> str:
    return f"€{value:,.0f}"


def _table_style(n_rows: int, *, total_row: bool, first_col_left: bool = True) -> Any:
    cmds: list[tuple[Any, ...]] = [
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
        ("BACKGROUND", (0, 0), (-1, 0), _HEADER_BG),
        ("ALIGN", (0, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, _HEADER_BG),
        ("BOX", (0, 0), (-1, -1), 0.5, colors.grey),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]
    if first_col_left:
        cmds.append(("ALIGN", (0, 0), (0, -1), "LEFT"))
    last_body = n_rows - 2 if total_row else n_rows - 1
    for row in range(2, last_body + 1, 2):
        cmds.append(("BACKGROUND", (0, row), (-1, row), _ZEBRA_BG))
    if total_row:
        cmds += [
            ("BACKGROUND", (0, -1), (-1, -1), _TOTAL_BG),
            ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
            ("LINEABOVE", (0, -1), (-1, -1), 0.8, _HEADER_BG),
        ]
    return TableStyle(cmds)


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _legend(data: ReportData, x: float, y: float) -> Any:
    legend = Legend()
    legend.x = x
    legend.y = y
    legend.fontName = "Helvetica"
    legend.fontSize = 7
    legend.alignment = "right"
    legend.columnMaximum = 1
    legend.deltax = 88
    legend.dx = 7
    legend.dy = 7
    legend.colorNamePairs = [(_PALETTE[i], _short(name)) for i, name in enumerate(data.products)]
    return legend


def _drawing_title(drawing: Any, text: str) -> None:
    drawing.add(
        String(
            drawing.width / 2,
            drawing.height - 14,
            text,
            fontName="Helvetica-Bold",
            fontSize=10,
            textAnchor="middle",
        )
    )


def _revenue_bar_chart(data: ReportData, width: float) -> Any:
    """Stacked bar chart: revenue per month, one colour per product."""
    drawing = Drawing(width, 250)
    _drawing_title(drawing, f"Monthly revenue by product, {YEAR}")
    chart = VerticalBarChart()
    chart.x = 50
    chart.y = 55
    chart.width = width - 70
    chart.height = 160
    chart.data = [[data.revenue(p, m) for m in range(len(MONTHS))] for p in range(len(data.products))]
    chart.categoryAxis.categoryNames = list(MONTHS)
    chart.categoryAxis.style = "stacked"
    chart.categoryAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.labelTextFormat = _eur0
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#cccccc")
    chart.valueAxis.gridStrokeDashArray = (2, 2)
    chart.barSpacing = 0
    chart.groupSpacing = 6
    for i, color in enumerate(_PALETTE):
        chart.bars[i].fillColor = color
        chart.bars[i].strokeColor = None
    drawing.add(chart)
    drawing.add(_legend(data, 10, 20))
    return drawing


def _orders_line_chart(data: ReportData, width: float) -> Any:
    """Line chart: units ordered per month, one line per product."""
    drawing = Drawing(width, 250)
    _drawing_title(drawing, f"Units ordered per month, {YEAR}")
    chart = HorizontalLineChart()
    chart.x = 50
    chart.y = 55
    chart.width = width - 70
    chart.height = 160
    chart.data = [list(row) for row in data.orders]
    chart.categoryAxis.categoryNames = list(MONTHS)
    chart.categoryAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#cccccc")
    chart.valueAxis.gridStrokeDashArray = (2, 2)
    for i, color in enumerate(_PALETTE):
        chart.lines[i].strokeColor = color
        chart.lines[i].strokeWidth = 1.5
    drawing.add(chart)
    drawing.add(_legend(data, 10, 20))
    return drawing


def _share_pie_chart(data: ReportData, width: float) -> Any:
    """Pie chart: share of the year's revenue per product."""
    drawing = Drawing(width, 225)
    _drawing_title(drawing, "Share of revenue")
    pie = Pie()
    pie.x = width / 2 - 70
    pie.y = 25
    pie.width = pie.height = 140
    revenues = [data.product_revenue(p) for p in range(len(data.products))]
    total = sum(revenues) or 1.0
    pie.data = revenues
    pie.labels = [
        f"{_short(name, 14)} {100 * rev / total:.0f}%" for name, rev in zip(data.products, revenues, strict=True)
    ]
    pie.sideLabels = True
    pie.slices.fontSize = 7
    pie.slices.strokeColor = colors.white
    for i, color in enumerate(_PALETTE):
        pie.slices[i].fillColor = color
    drawing.add(pie)
    return drawing


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


def _styles() -> dict[str, Any]:
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("ReportTitle", parent=base["Title"], fontSize=28, leading=34, spaceAfter=18),
        "subtitle": ParagraphStyle(
            "ReportSubtitle",
            parent=base["Normal"],
            fontSize=14,
            leading=20,
            alignment=TA_CENTER,
            textColor=colors.HexColor("#445566"),
        ),
        "h1": base["Heading1"],
        "h2": base["Heading2"],
        "body": base["BodyText"],
        "note": ParagraphStyle(
            "ReportNote",
            parent=base["BodyText"],
            fontSize=8,
            leading=10,
            textColor=colors.grey,
            alignment=TA_CENTER,
        ),
    }


def _title_page(data: ReportData, st: dict[str, Any]) -> list[Any]:
    return [
        Spacer(1, 6 * cm),
        Paragraph("Annual Sales Report", st["title"]),
        Paragraph(f"{escape(data.company)}, {escape(data.city)}", st["subtitle"]),
        Paragraph(f"Contact: {escape(data.customer)}", st["subtitle"]),
        Paragraph(f"User #{data.user_id} &middot; Fiscal year {YEAR}", st["subtitle"]),
        Spacer(1, 8 * cm),
        Paragraph(
            "Generated by the kvern <i>reports</i> example from synthetic data.",
            st["note"],
        ),
        PageBreak(),
    ]


def _summary_section(data: ReportData, st: dict[str, Any], width: float) -> list[Any]:
    n = len(data.products)
    best_month = max(range(len(MONTHS)), key=data.month_revenue)
    top = max(range(n), key=data.product_revenue)
    kpis = [
        ["Total revenue", _eur(data.total_revenue)],
        ["Units ordered", f"{data.total_orders:,}"],
        ["Average price per unit", _eur(data.total_revenue / max(1, data.total_orders))],
        ["Best month", f"{MONTHS[best_month]} ({_eur(data.month_revenue(best_month))})"],
        ["Top product", data.products[top]],
    ]
    kpi_table = Table(kpis, colWidths=[5 * cm, 7 * cm], hAlign="LEFT")
    kpi_table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 10),
                ("LINEBELOW", (0, 0), (-1, -2), 0.25, colors.lightgrey),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    rows: list[list[str]] = [["Product", "Unit price", "Units", "Revenue", "Share", "Best month"]]
    for p in range(n):
        best = max(range(len(MONTHS)), key=data.orders[p].__getitem__)
        rows.append(
            [
                data.products[p],
                _eur(data.unit_prices[p]),
                f"{data.product_orders(p):,}",
                _eur(data.product_revenue(p)),
                f"{100 * data.product_revenue(p) / (data.total_revenue or 1):.1f}%",
                MONTHS[best],
            ]
        )
    rows.append(["Total", "", f"{data.total_orders:,}", _eur(data.total_revenue), "100.0%", ""])
    products = Table(rows, colWidths=[5 * cm, 2.2 * cm, 1.8 * cm, 3 * cm, 1.8 * cm, 2.2 * cm])
    products.setStyle(_table_style(len(rows), total_row=True))
    return [
        Paragraph("Summary", st["h1"]),
        Paragraph(
            f"Sales to <b>{escape(data.company)}</b> in {YEAR}, across {n} products and {len(REGIONS)} regions.",
            st["body"],
        ),
        Spacer(1, 0.4 * cm),
        kpi_table,
        Spacer(1, 0.6 * cm),
        Paragraph("Products", st["h2"]),
        products,
        Spacer(1, 0.6 * cm),
        _share_pie_chart(data, width),
        PageBreak(),
    ]


def _monthly_table(data: ReportData, *, revenue: bool) -> Any:
    """Months as rows, products as columns, with totals."""
    n = len(data.products)
    fmt: Callable[[float], str] = _eur0 if revenue else (lambda v: f"{v:,.0f}")
    rows: list[list[str]] = [["Month", *(_short(p, 14) for p in data.products), "Total"]]
    for m, month in enumerate(MONTHS):
        values: Sequence[float] = (
            [data.revenue(p, m) for p in range(n)] if revenue else [data.orders[p][m] for p in range(n)]
        )
        rows.append([month, *(fmt(v) for v in values), fmt(sum(values))])
    totals: Sequence[float] = (
        [data.product_revenue(p) for p in range(n)] if revenue else [data.product_orders(p) for p in range(n)]
    )
    rows.append(["Total", *(fmt(v) for v in totals), fmt(sum(totals))])
    table = Table(rows, colWidths=[1.6 * cm] + [2.5 * cm] * n + [2.3 * cm], repeatRows=1)
    table.setStyle(_table_style(len(rows), total_row=True))
    return table


def _orders_section(data: ReportData, st: dict[str, Any], width: float) -> list[Any]:
    return [
        Paragraph("Monthly orders", st["h1"]),
        Paragraph("Units ordered per product and month.", st["body"]),
        Spacer(1, 0.3 * cm),
        _monthly_table(data, revenue=False),
        Spacer(1, 0.8 * cm),
        _orders_line_chart(data, width),
        PageBreak(),
    ]


def _revenue_section(data: ReportData, st: dict[str, Any], width: float) -> list[Any]:
    return [
        Paragraph("Monthly revenue", st["h1"]),
        Paragraph("Revenue (units &times; unit price) per product and month.", st["body"]),
        Spacer(1, 0.3 * cm),
        _monthly_table(data, revenue=True),
        Spacer(1, 0.8 * cm),
        _revenue_bar_chart(data, width),
        PageBreak(),
    ]


def _regions_section(data: ReportData, st: dict[str, Any]) -> list[Any]:
    n = len(data.products)
    rows: list[list[str]] = [["Product", *REGIONS, "Total"]]
    region_totals = [0.0] * len(REGIONS)
    for p in range(n):
        rev = data.product_revenue(p)
        parts = [rev * share for share in data.region_share[p]]
        for r, part in enumerate(parts):
            region_totals[r] += part
        rows.append([data.products[p], *(_eur0(v) for v in parts), _eur0(rev)])
    rows.append(["Total", *(_eur0(v) for v in region_totals), _eur0(sum(region_totals))])
    table = Table(rows, colWidths=[5 * cm] + [2.4 * cm] * len(REGIONS) + [2.6 * cm])
    table.setStyle(_table_style(len(rows), total_row=True))

    quarters: list[list[str]] = [["Quarter", "Units", "Revenue", "vs. previous"]]
    previous: float | None = None
    for q in range(4):
        months = range(3 * q, 3 * q + 3)
        units = sum(data.month_orders(m) for m in months)
        rev = sum(data.month_revenue(m) for m in months)
        change = "" if not previous else f"{100 * (rev - previous) / previous:+.1f}%"
        quarters.append([f"Q{q + 1} {YEAR}", f"{units:,}", _eur(rev), change])
        previous = rev
    qtable = Table(quarters, colWidths=[3 * cm, 3 * cm, 4 * cm, 3 * cm], hAlign="LEFT")
    qtable.setStyle(_table_style(len(quarters), total_row=False))
    return [
        Paragraph("Regions and quarters", st["h1"]),
        KeepTogether([Paragraph("Revenue by region", st["h2"]), Spacer(1, 0.2 * cm), table]),
        Spacer(1, 0.8 * cm),
        KeepTogether([Paragraph("Quarterly totals", st["h2"]), Spacer(1, 0.2 * cm), qtable]),
    ]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

# Progress checkpoints, in order. The work between two checkpoints is the
# step named by the later one.
_P_PROFILE = 10  # load the customer's profile
_P_ORDERS = 30  # load a year of orders
_P_SUMMARY = 45  # title page and summary
_P_MONTHLY = 60  # monthly tables and charts
_P_REGIONS = 75  # regional breakdown
_P_RENDER = 100  # lay out and render the PDF


def build_report(user_id: int, on_progress: Callable[[int], None], pace_seconds: float) -> tuple[bytes, int]:
    """Build the report of ``user_id``; return ``(pdf_bytes, page_count)``.

    ``on_progress`` is called with strictly increasing percentages, from 0
    to 100. The whole build is paced to take about ``pace_seconds`` (or its
    CPU time, if that is longer); ``0`` builds as fast as possible.
    """
    _check_user_id(user_id)
    if isinstance(pace_seconds, bool) or not isinstance(pace_seconds, (int, float)):
        raise TypeError("pace_seconds must be a number")
    if not math.isfinite(pace_seconds) or pace_seconds < 0:
        raise ValueError(f"pace_seconds must be finite and >= 0, got {pace_seconds}")

    pacer = _Pacer(float(pace_seconds), on_progress)
    pacer.reach(0)

    # The "database queries". A real report would wait here for a slow query
    # of the customer's profile and another of a year of orders; the data are
    # generated instead, and the pacer's sleeps stand in for that waiting.
    data = make_report_data(user_id)
    pacer.reach(_P_PROFILE)
    pacer.reach(_P_ORDERS)

    buf = BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=1.8 * cm,
        rightMargin=1.8 * cm,
        topMargin=2 * cm,
        bottomMargin=2 * cm,
        title=f"Annual Sales Report - user {user_id}",
        author="kvern reports example",
        subject=f"Sales {YEAR}",
        creator="kvern examples/reports",
        invariant=True,  # no timestamps or random ids: deterministic bytes
    )
    width = float(doc.width)
    st = _styles()

    story: list[Any] = _title_page(data, st)
    story += _summary_section(data, st, width)
    pacer.reach(_P_SUMMARY)
    story += _orders_section(data, st, width)
    story += _revenue_section(data, st, width)
    pacer.reach(_P_MONTHLY)
    story += _regions_section(data, st)
    pacer.reach(_P_REGIONS)

    pages = 0

    def first_page(canvas: Any, _doc: Any) -> None:
        nonlocal pages
        pages += 1

    def later_page(canvas: Any, _doc: Any) -> None:
        nonlocal pages
        pages += 1
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.grey)
        top = A4[1] - 1.2 * cm
        canvas.drawString(doc.leftMargin, top, f"{data.company} - Annual Sales Report {YEAR}")
        canvas.drawRightString(A4[0] - doc.rightMargin, top, f"User #{user_id}")
        canvas.drawCentredString(A4[0] / 2, 1.1 * cm, f"Page {canvas.getPageNumber()}")
        canvas.restoreState()

    doc.build(story, onFirstPage=first_page, onLaterPages=later_page)
    pdf = buf.getvalue()
    pacer.reach(_P_RENDER)
    return pdf, pages
