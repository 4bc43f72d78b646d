"""The reports example's web site: a Django project that kvern's web heads serve behind nginx.

A person asks for the PDF report of a user id; the view enqueues ``generate_heavy_report.delay(user_id)``
through kvern and redirects to a page that follows the job and then offers the PDF.
"""
