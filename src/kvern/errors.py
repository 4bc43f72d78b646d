"""kvern's exceptions, as one tree:

KvernError
├── SpecError            the spec file is missing or invalid (names the field)
├── RuntimeStateError    the state dir says something unexpected
│   ├── NotRunning       the command needs a running instance and there is none
│   └── AlreadyRunning   `up` found the instance already running
├── JobNotFound          no job has the id (or id prefix) given
├── StartError           a part of the platform did not become healthy
├── ServiceError         `kvern service` cannot write, enable or remove the systemd unit
├── BrokerAdminError     an administrative broker command failed
├── StoreUnavailable     the job store cannot be reached
└── PublishError         the broker did not confirm a message
    └── BacklogFull      the queue is at its length limit (reject-publish)
PermanentError           raised by a task: fail the job now, do not retry (not a KvernError: user-facing)
"""

from __future__ import annotations


class KvernError(Exception):
    """Base of every error kvern raises itself."""


class SpecError(KvernError):
    """The spec file is missing or invalid; the message names the field."""


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


class StoreUnavailable(KvernError):
    """The job store cannot be reached."""


class PublishError(KvernError):
    """The broker did not confirm a message in time."""


class BacklogFull(PublishError):
    """The queue is full: the broker rejected the message (overflow reject-publish)."""


class PermanentError(Exception):
    """Raise from a task to fail its job at once, without retries."""
