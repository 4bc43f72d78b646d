"""The site's pages: ask for a report, follow it, download it."""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from tasks import generate_heavy_report

import kvern
from reportsite.forms import ReportForm
from reportsite.reports import Report, find_report, read_pdf, report_events_url

log = logging.getLogger(__name__)

#: Seconds a browser is asked to wait before trying again when kvern cannot take the job.
RETRY_AFTER = 5


class SeeOther(HttpResponseRedirect):
    """After a POST, the browser GETs the new page (a reload does not post the form again)."""

    status_code = 303


@require_http_methods(["GET", "POST"])
def request_report(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "reportsite/request.html", {"form": ReportForm()})
    form = ReportForm(request.POST)
    if not form.is_valid():
        return render(request, "reportsite/request.html", {"form": form}, status=400)
    user_id, email = form.cleaned_data["user_id"], form.cleaned_data.get("email")
    try:
        job = enqueue_report(user_id, email)
    except kvern.Unavailable as exc:  # store or broker away, queue full: nothing was kept, so try again later
        log.warning("report of user %s not accepted: %s", user_id, exc)
        return try_again_later(request)
    except kvern.SubmitError as exc:  # an address kvern refuses, or no mail server in kvern.toml
        form.add_error("email", f"We cannot email this report: {exc.message}")
        return render(request, "reportsite/request.html", {"form": form}, status=400)
    progress = reverse("report_progress", args=[job.id])
    return SeeOther(progress + ("?emailed=1" if email else ""))


def enqueue_report(user_id: int, email: str | None) -> Any:
    """The report's job; with an email address, kvern mails it a link to the report once it is ready (the
    address is the job's own notification target: README "Notifications")."""
    if not email:
        return generate_heavy_report.delay(user_id)
    return kvern.submit(generate_heavy_report, user_id, notify=[f"mailto:{email}"])


def try_again_later(request: HttpRequest, *, as_json: bool = False) -> HttpResponse:
    if as_json:
        response: HttpResponse = JsonResponse({"error": "reports are unavailable for a moment"}, status=503)
    else:
        response = render(request, "reportsite/unavailable.html", {"retry_after": RETRY_AFTER}, status=503)
    response["Retry-After"] = str(RETRY_AFTER)
    return response


def unavailable_is_503(*, as_json: bool = False) -> Callable[[Callable[..., Any]], Callable[..., HttpResponse]]:
    """A view that reads a job: while kvern's job store cannot be reached, it answers 503 rather than 500."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except kvern.Unavailable as exc:
                log.warning("%s: %s", request.path, exc)
                return try_again_later(request, as_json=as_json)

        return guarded

    return decorate


def _report_or_404(job_id: UUID) -> Report:
    report = find_report(str(job_id))
    if report is None:
        raise Http404("no such report")
    return report


@require_GET
@never_cache
@unavailable_is_503()
def report_progress(request: HttpRequest, job_id: UUID) -> HttpResponse:
    report = _report_or_404(job_id)
    events = None if report.done else report_events_url(report.job_id)
    emailed = request.GET.get("emailed") == "1"
    context = {"report": report, "events_url": events, "emailed": emailed}
    return render(request, "reportsite/progress.html", context)


@require_GET
@never_cache
@unavailable_is_503(as_json=True)
def report_status(request: HttpRequest, job_id: UUID) -> JsonResponse:
    report = find_report(str(job_id))
    if report is None:
        return JsonResponse({"error": "no such report"}, status=404)
    return JsonResponse(
        {
            "id": report.job_id,
            "status": report.status,
            "status_text": report.status_text,
            "progress": report.progress,
            "message": report.message,
            "done": report.done,
            "failed": report.failed,
            "pdf_url": reverse("report_pdf", args=[job_id]) if report.ready else None,
        }
    )


@require_GET
@unavailable_is_503()
def report_pdf(request: HttpRequest, job_id: UUID) -> FileResponse:
    report = _report_or_404(job_id)
    pdf = read_pdf(report.job_id) if report.ready else None
    if pdf is None:
        raise Http404("the report has no PDF (yet)")
    name = f"report-user-{report.user_id}.pdf" if report.user_id is not None else "report.pdf"
    return FileResponse(io.BytesIO(pdf), as_attachment=True, filename=name, content_type="application/pdf")
