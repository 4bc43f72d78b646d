"""atomic_write: a reader sees the old file or the new one, never half of one; private files stay private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kvern.files import atomic_write


def test_the_file_is_replaced_whole_with_the_mode_given(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    path.write_text("old")
    with path.open() as reader:  # a process that opened the old file keeps reading the old file
        atomic_write(path, "new", mode=0o600)
        assert reader.read() == "old"
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["runtime.json"]  # no temporary file left beside it


def test_bytes_and_a_read_only_mode(tmp_path: Path) -> None:
    path = tmp_path / ".erlang.cookie"
    atomic_write(path, b"ABC", mode=0o400)
    atomic_write(path, b"DEF", mode=0o400)  # over a read-only file: the rename replaces it
    assert path.read_bytes() == b"DEF"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text("{}")
    with pytest.raises(TypeError):
        atomic_write(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["pins.json"]
