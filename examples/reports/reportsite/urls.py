from django.urls import path

from reportsite import views

urlpatterns = [
    path("", views.request_report, name="request_report"),
    # kvern's job ids are UUIDs: anything else is not a report, and gets the 404 page before any lookup.
    path("reports/<uuid:job_id>/", views.report_progress, name="report_progress"),
    path("reports/<uuid:job_id>/status", views.report_status, name="report_status"),
    path("reports/<uuid:job_id>/pdf", views.report_pdf, name="report_pdf"),
]
