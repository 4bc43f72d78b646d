"""`kvern.job(job_id)`: the handle of a job accepted earlier, over the in-memory store."""

from __future__ import annotations

import pytest

import kvern
from kvern.enqueue import lookup
from kvern.enqueue.submitter import Submitter
from kvern.errors import JobNotFound
from tests.unit.test_enqueue import finish, parts, project, submitter

__all__ = ["project", "submitter"]  # the fixtures this module borrows


def test_a_job_submitted_earlier_is_found_by_its_id(submitter: Submitter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookup, "current_submitter", lambda: submitter)
    submitted = submitter.submit("shop_tasks.report", [42])
    handle = kvern.job(submitted.id)
    assert isinstance(handle, kvern.JobHandle)
    assert (handle.id, handle.url, handle.status()) == (submitted.id, submitted.url, "queued")
    finish(parts(submitter)[0], submitted.id, result="report-42")
    assert handle.status() == "succeeded" and handle.result(timeout=1) == "report-42"


@pytest.mark.parametrize("job_id", ["00000000-0000-4000-8000-000000000000", "", "not a job id"])
def test_an_unknown_id_raises_job_not_found(submitter: Submitter, monkeypatch: pytest.MonkeyPatch, job_id: str) -> None:
    monkeypatch.setattr(lookup, "current_submitter", lambda: submitter)
    with pytest.raises(JobNotFound):
        kvern.job(job_id)
    assert kvern.JobNotFound is JobNotFound
