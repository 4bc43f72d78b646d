"""A worker forks its task processes after it made its job store: no child may use the parent's connections."""

from __future__ import annotations

import os

from sqlalchemy import text

from kvern.jobs.store import make_engine


def backend_pid_in_child(engine_url: str) -> tuple[int, int, int]:
    """(parent's backend, child's backend, parent's backend after the child is done) for one pooled engine."""
    engine = make_engine(engine_url)
    try:
        with engine.connect() as conn:  # the parent's connection goes back to the pool, open
            parent = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report the server process its connection talks to, and leave at once
            code = 0
            try:
                with engine.connect() as conn:
                    child = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                os.write(write_end, str(child).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with os.fdopen(read_end) as pipe:
            child = int(pipe.read())
        with engine.connect() as conn:  # and the parent's own connection still works
            after = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        return parent, child, after
    finally:
        engine.dispose()


def test_a_forked_child_does_not_reuse_the_parents_connection(postgres_admin_url: str) -> None:
    parent, child, after = backend_pid_in_child(postgres_admin_url)
    assert child != parent  # its own connection, not the parent's socket
    assert after == parent  # the parent's connection was left open for the parent
