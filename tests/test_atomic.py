"""atomic.py: a file is either written whole or left as it was."""

from __future__ import annotations

import pytest

import atomic
from cli import CLIError


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic.write_text(path, "first")
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def disk_full(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(atomic.WriteError, match=r"cannot write .*out.txt: No space left"):
        atomic.write_atomically(path, disk_full)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_errors_use_the_callers_class_and_a_parent_file_is_refused(tmp_path):
    class MyError(CLIError):
        pass

    (tmp_path / "file").write_text("x")
    with pytest.raises(MyError, match="file is not a folder"):
        atomic.write_text(tmp_path / "file" / "out.txt", "y", MyError)


def test_pending_file_commits_on_success_and_aborts_on_error(tmp_path):
    path = tmp_path / "video.mp4"
    with atomic.PendingFile(path) as pending:
        pending.tmp.write_bytes(b"frames")
        assert not path.exists() and pending.tmp.name.startswith(".video.mp4.")
    assert path.read_bytes() == b"frames"
    with pytest.raises(RuntimeError), atomic.PendingFile(path) as pending:
        pending.tmp.write_bytes(b"broken")
        raise RuntimeError("encoder crashed")
    assert path.read_bytes() == b"frames"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]
