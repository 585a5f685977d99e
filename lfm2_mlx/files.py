"""Output files that are complete or absent: written to a temporary sibling and renamed into place,
so an interrupted or failed run never leaves a half-written file (and an old one survives)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def check_writable(target: str | Path) -> Path:
    """`target` as a Path if a file can be created there, else an `OutputError` (checked before any
    model work, so that a typo in an output path costs nothing)."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: folder {parent} does not exist")
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: folder {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK) and not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {target}: permission denied")
    return target


class AtomicFile:
    """A temporary path next to `target`: `commit()` renames it onto `target`, `discard()` removes
    it, so `target` is either complete or untouched."""

    def __init__(self, target: str | Path):
        self.target = check_writable(target)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".part")
        except OSError as e:
            raise OutputError(f"cannot write {self.target}: {e.strerror or e}") from None
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        try:
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual ones
            os.replace(self.tmp, self.target)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it becomes `target` if the block ends normally and is
    removed if it raises (an exception, Ctrl-C or SIGTERM)."""
    f = AtomicFile(target)
    try:
        yield f.tmp
        f.commit()
    except BaseException:
        f.discard()
        raise


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
