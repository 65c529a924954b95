"""Atomic file writes: the one way every file of the project is written.

A file is written under a temporary name in its own folder, flushed to disk (fsync) and then
renamed over its final path, so a crash, a kill -9 or a full disk never leaves half a file: the
path holds either the complete new file or whatever it held before.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from cli import CLIError


class WriteError(CLIError):
    """A file could not be written (names the file and the reason)."""


class PendingFile:
    """A file being written under a temporary name beside ``path``; ``commit()`` moves it into
    place, ``abort()`` deletes it. As a context manager it commits on success and aborts on an
    exception. For writers that keep a file open across many calls (a video encoder); most code
    calls ``write_atomically``.

    Args:
        path: the final path; its folder is created when missing.
        error: the ``WriteError`` (or other ``CLIError``) class raised on failure.
    """

    def __init__(self, path: str | os.PathLike, error: type[CLIError] = WriteError):
        self.path = Path(path)
        self.error = error
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}."
                                       f"{uuid.uuid4().hex[:8]}.tmp")
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise error(f"cannot write {self.path}: {self.path.parent} is not a folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise error(f"cannot write {self.path}: {err.strerror or err}") from None

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it over the final path."""
        try:
            with open(self.tmp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.abort()
            raise self.error(f"cannot write {self.path}: {err.strerror or err}") from err

    def abort(self) -> None:
        """Delete the temporary file (the final path is left as it was)."""
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None],
                     error: type[CLIError] = WriteError) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then move it to ``path`` atomically.

    An ``OSError`` from ``write`` (a full disk, say) becomes one ``error`` line naming
    ``path``; ``path`` keeps its earlier content then.
    """
    pending = PendingFile(path, error)
    try:
        write(pending.tmp)
    except OSError as err:
        pending.abort()
        raise error(f"cannot write {pending.path}: {err.strerror or err}") from err
    except BaseException:
        pending.abort()
        raise
    pending.commit()


def write_text(path: str | os.PathLike, text: str, error: type[CLIError] = WriteError) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), error)
