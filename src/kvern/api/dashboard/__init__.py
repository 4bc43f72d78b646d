"""The dashboard: a live view of the instance and its jobs for the holders of an admin key.

`router` serves it under /_kvern/ on every web head: pages.py (pages, assets, sign-in, the live feed),
jobs.py (finding jobs, one job, its actions), overview.py (what the live feed shows), session.py (the cookie).
"""

from __future__ import annotations

from fastapi import APIRouter

from kvern.api.dashboard import jobs, pages
from kvern.constants import DASHBOARD_PREFIX

router = APIRouter(prefix=DASHBOARD_PREFIX, include_in_schema=False)
router.include_router(pages.router)
router.include_router(jobs.router)

__all__ = ["router"]
