"""A pool's store-writer and prefetch settings: defaults, values read, and bad values refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvern.spec import PoolSpec, load_spec
from tests.unit.test_spec import assert_spec_error, write_spec

POOL = """
[app]
tasks = "tasks"

[[pools]]
name = "short"
"""


def test_a_pool_writes_in_small_batches_and_prefetches_one_by_default(tmp_path: Path) -> None:
    pool = load_spec(write_spec(tmp_path, POOL)).pool("short")
    assert (pool.flush_ms, pool.flush_items, pool.prefetch) == (2.0, 64, 1)
    assert (PoolSpec.flush_ms, PoolSpec.flush_items, PoolSpec.prefetch) == (2.0, 64, 1)


def test_a_pool_sets_its_writer_and_prefetch(tmp_path: Path) -> None:
    pool = load_spec(write_spec(tmp_path, POOL + "flush_ms = 10\nflush_items = 500\nprefetch = 8\n")).pool("short")
    assert (pool.flush_ms, pool.flush_items, pool.prefetch) == (10.0, 500, 8)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("flush_ms = -1", "pools[0].flush_ms: must be between 0 and 1000"),
        ("flush_ms = 5000", "pools[0].flush_ms: must be between 0 and 1000"),
        ("flush_items = 0", "pools[0].flush_items: must be between 1 and 5000"),
        ("prefetch = 0", "pools[0].prefetch: must be between 1 and 1000"),
        ('prefetch = "many"', "pools[0].prefetch"),
    ],
)
def test_bad_writer_settings_are_refused_by_name(tmp_path: Path, line: str, fragment: str) -> None:
    assert_spec_error(write_spec(tmp_path, POOL + line + "\n"), fragment)
