"""The ``reports`` example: a plain Celery project run by kvern.

The classic "slow task" of every background-jobs article::

    @app.task
    def generate_heavy_report(user_id):
        time.sleep(10)
        return "Report Ready"

made real: the task builds a multi-page PDF report (tables and charts) for
the user, reports its progress while it works, and stores the PDF as a job
artifact that the site (``reportsite``) offers for download.

Nothing here is kvern-specific except two calls, ``kvern.progress`` and
``kvern.save_artifact``. The site's view calls
``generate_heavy_report.delay(user_id)``; the task is registered as
``tasks.generate_heavy_report``, the name ``kvern.toml`` and clients of the
job API (``POST /api/v1/jobs``) use, so this module must be imported as
``tasks`` (run the worker from this directory).
"""

from __future__ import annotations

import math
from typing import Any

from celery import Celery
from report_pdf import MAX_USER_ID, build_report

import kvern

app = Celery("reports")

#: Name under which the PDF is stored with the job.
ARTIFACT_NAME = "report.pdf"
#: Upper bound of ``seconds``: anyone who can reach the job API can pass it.
MAX_SECONDS = 120.0
#: Share of the progress bar given to building the PDF; the rest is storing it.
_BUILD_SHARE = 95


def _as_user_id(user_id: object) -> int:
    """Accept an int, or a string of digits (e.g. from a hand-written request)."""
    if isinstance(user_id, bool):
        raise TypeError("user_id must be an integer, not a boolean")
    if isinstance(user_id, str):
        text = user_id.strip()
        if not text.isdigit() or len(text) > 19:
            raise ValueError(f"user_id must be a non-negative integer, got {user_id!r}")
        user_id = int(text)
    if not isinstance(user_id, int):
        raise TypeError(f"user_id must be an integer, not {type(user_id).__name__}")
    if not 0 <= user_id <= MAX_USER_ID:
        raise ValueError(f"user_id must be between 0 and {MAX_USER_ID}, got {user_id}")
    return user_id


def _as_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("seconds must be a number")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS}, got {seconds}")
    return float(seconds)


# Celery ships no type information, so mypy sees an untyped decorator here.
@app.task  # type: ignore[untyped-decorator, unused-ignore]
def generate_heavy_report(user_id: int, seconds: float = 3.0) -> dict[str, Any]:
    """Build the PDF report of ``user_id`` in about ``seconds`` and store it.

    Returns a small JSON-able summary; the PDF itself is the job's
    ``report.pdf`` artifact.
    """
    uid = _as_user_id(user_id)
    pace = _as_seconds(seconds)
    kvern.progress(0, f"Building the report of user {uid}")

    def on_progress(pct: int) -> None:
        # build_report goes 0..100; keep the last few percent for the upload.
        kvern.progress(pct * _BUILD_SHARE // 100)

    # build_report spreads ``pace`` seconds over its steps: the waiting stands
    # in for the slow database queries a real report would make.
    pdf, pages = build_report(uid, on_progress, pace)
    kvern.save_artifact(ARTIFACT_NAME, pdf, content_type="application/pdf")
    kvern.progress(100, "Report Ready")
    return {
        "user_id": uid,
        "pages": pages,
        "bytes": len(pdf),
        "artifact": ARTIFACT_NAME,
        "message": "Report Ready",
    }
