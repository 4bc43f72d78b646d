"""kvern's exceptions, as one tree:

KvernError
├── SpecError            the spec file is missing or invalid (names the field)
│   └── ReloadRefused    `kvern reload` met changes that need `down` + `up` (one line each)
├── RuntimeStateError    the state dir says something unexpected
│   ├── NotRunning       the command needs a running instance and there is none
│   └── AlreadyRunning   `up` found the instance already running
├── JobNotFound          no job has the id (or id prefix) given
├── StartError           a part of the platform did not become healthy
├── ServiceError         `kvern service` cannot write, enable or remove the systemd unit
├── BrokerAdminError     an administrative broker command failed
├── SubmitError          a submission is refused before anything is recorded (status, code: as the job API)
├── JobFailed            a job awaited through its handle ended failed, dead or cancelled
└── Unavailable          kvern cannot take the job now; try again later (the job API's 503)
    ├── StoreUnavailable the job store cannot be reached
    └── PublishError     the broker did not confirm a message
        └── BacklogFull  the queue is at its length limit (reject-publish)
PermanentError           raised by a task: fail the job now, do not retry (not a KvernError: user-facing)
"""

from __future__ import annotations


class KvernError(Exception):
    """Base of every error kvern raises itself."""


class SpecError(KvernError):
    """The spec file is missing or invalid; the message names the field."""


class ReloadRefused(SpecError):
    """The edited spec changes fields a running instance cannot take; each line names one, nothing was changed."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class RuntimeStateError(KvernError):
    """The instance is not in the state a command needs."""


class NotRunning(RuntimeStateError):
    """The command needs a running instance and there is none (exit RET_NOT_RUNNING)."""


class AlreadyRunning(RuntimeStateError):
    """`up` found the instance already running (exit RET_ALREADY_RUNNING)."""


class JobNotFound(KvernError):
    """No job has the id, or id prefix, that was given."""


class StartError(KvernError):
    """A part of the platform did not become healthy in time."""


class ServiceError(KvernError):
    """`kvern service` cannot write, enable or remove the instance's systemd unit."""


class BrokerAdminError(KvernError):
    """An administrative command against the broker failed."""


class SubmitError(KvernError):
    """A submission refused before anything was recorded: unknown task, arguments that do not bind or do not fit
    the spec's [limits], a reused idempotency key. `status` and `code` are what the job API answers for it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class JobFailed(KvernError):
    """The job ended without a result: `status` is failed, dead or cancelled; `error` is the job's last error."""

    def __init__(self, job_id: str, status: str, error: str | None) -> None:
        super().__init__(f"job {job_id} ended {status}" + (f": {error}" if error else ""))
        self.job_id = job_id
        self.status = status
        self.error = error


class Unavailable(KvernError):
    """The job could not be taken now (store or broker away, queue full); nothing was kept: retry later."""

    status = 503


class StoreUnavailable(Unavailable):
    """The job store cannot be reached."""


class PublishError(Unavailable):
    """The broker did not confirm a message in time."""


class BacklogFull(PublishError):
    """The queue is full: the broker rejected the message (overflow reject-publish)."""


class PermanentError(Exception):
    """Raise from a task to fail its job at once, without retries."""
