"""Job ids: random version 4 UUIDs cut from bulk draws; unique across threads and across a fork."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from kvern.enqueue.core import JOB_IDS_PER_DRAW, JobIds


def test_ids_are_version_4_uuids_and_unique_beyond_one_draw() -> None:
    ids = JobIds()
    drawn = [ids.next() for _ in range(3 * JOB_IDS_PER_DRAW + 5)]
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_threads_drawing_at_once_never_share_an_id() -> None:
    ids = JobIds()
    with ThreadPoolExecutor(16) as pool:
        drawn = list(pool.map(lambda _: ids.next(), range(20 * JOB_IDS_PER_DRAW)))
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_does_not_reuse_the_parents_draw() -> None:
    ids = JobIds()
    ids.next()  # the parent holds a draw with ids still unused
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read_end)
        os.write(write_end, "\n".join(ids.next() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {ids.next() for _ in range(8)}
    assert len(child) == 8 and not child & parent
