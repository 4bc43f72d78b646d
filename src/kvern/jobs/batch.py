"""The writes a worker makes for its attempts, as values: a node's store writer commits many of them together.

Each op answers exactly as the store method it names would on its own (`claim_attempt`, `record_success`, ...);
`JobStoreProtocol.write_batch` applies a sequence of them, in order, in one transaction, so a node's children
pay one commit (one fsync) for many jobs while every write keeps its fence. Ops travel between a worker's task
processes and its writer as JSON (`to_wire`, `from_wire`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kvern.jobs.records import Claim
from kvern.jobs.states import JobStatus

if TYPE_CHECKING:
    from kvern.jobs.base import JobStoreProtocol


@dataclass(frozen=True)
class ClaimAttempt:
    kind: ClassVar[str] = "claim"
    job_id: str
    worker: str

    def apply(self, store: JobStoreProtocol) -> Claim:
        return store.claim_attempt(self.job_id, self.worker)


@dataclass(frozen=True)
class AttemptBegan:
    """A task process began running the attempt it was handed: sent without waiting (nothing is answered)."""

    kind: ClassVar[str] = "began"
    job_id: str
    attempt: int
    at: float

    def apply(self, store: JobStoreProtocol) -> bool:
        store.mark_began(self.job_id, self.attempt, self.at)
        return True


@dataclass(frozen=True)
class RecordSuccess:
    kind: ClassVar[str] = "success"
    job_id: str
    attempt: int
    result: Any

    def apply(self, store: JobStoreProtocol) -> bool:
        return store.record_success(self.job_id, self.attempt, self.result)


@dataclass(frozen=True)
class RecordFailure:
    kind: ClassVar[str] = "failure"
    job_id: str
    attempt: int
    error: str
    status: JobStatus
    traceback: str | None = None

    def apply(self, store: JobStoreProtocol) -> bool:
        return store.record_failure(self.job_id, self.attempt, self.error, self.status, self.traceback)


@dataclass(frozen=True)
class RecordRetry:
    kind: ClassVar[str] = "retry"
    job_id: str
    attempt: int
    error: str
    traceback: str | None = None
    delay_s: float = 0.0

    def apply(self, store: JobStoreProtocol) -> bool:
        return store.record_retry(self.job_id, self.attempt, self.error, self.traceback, self.delay_s)


@dataclass(frozen=True)
class RecordProgress:
    kind: ClassVar[str] = "progress"
    job_id: str
    attempt: int
    pct: int
    message: str | None = None

    def apply(self, store: JobStoreProtocol) -> bool:
        return store.record_progress(self.job_id, self.attempt, self.pct, self.message)


@dataclass(frozen=True)
class CheckCancelled:
    """A read, answered in the batch's transaction: a task process asks through its writer too."""

    kind: ClassVar[str] = "cancelled"
    job_id: str

    def apply(self, store: JobStoreProtocol) -> bool:
        return store.is_cancelled(self.job_id)


@dataclass(frozen=True)
class SaveSpooledArtifact:
    """An artifact a task process wrote to a spool file (`path`): the writer reads it into the store, so the task
    process needs no store connection and its heap holds no second copy of the blob."""

    kind: ClassVar[str] = "artifact"
    job_id: str
    attempt: int
    name: str
    content_type: str
    path: str
    max_total: int | None = None

    def apply(self, store: JobStoreProtocol) -> bool:
        data = Path(self.path).read_bytes()
        store.save_artifact(self.job_id, self.attempt, self.name, self.content_type, data, self.max_total)
        return True


WorkerOp = (
    ClaimAttempt
    | AttemptBegan
    | RecordSuccess
    | RecordFailure
    | RecordRetry
    | RecordProgress
    | CheckCancelled
    | SaveSpooledArtifact
)
Answer = Claim | bool
OP_TYPES: dict[str, type[WorkerOp]] = {
    cls.kind: cls
    for cls in (
        ClaimAttempt,
        AttemptBegan,
        RecordSuccess,
        RecordFailure,
        RecordRetry,
        RecordProgress,
        CheckCancelled,
        SaveSpooledArtifact,
    )
}


def op_to_wire(op: WorkerOp) -> dict[str, Any]:
    fields_ = asdict(op)
    if isinstance(op, RecordFailure):
        fields_["status"] = op.status.value
    return {"op": op.kind, **fields_}


def op_from_wire(data: dict[str, Any]) -> WorkerOp:
    """ValueError for an unknown op or fields it does not have."""
    cls = OP_TYPES.get(data.get("op", ""))
    if cls is None:
        raise ValueError(f"unknown writer op {data.get('op')!r}")
    values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
    if cls is RecordFailure:
        values["status"] = JobStatus(values["status"])
    return cls(**values)


def answer_to_wire(answer: Answer) -> Any:
    return asdict(answer) if isinstance(answer, Claim) else answer


def answer_from_wire(op: WorkerOp, data: Any) -> Answer:
    return Claim(**data) if isinstance(op, ClaimAttempt) else bool(data)
