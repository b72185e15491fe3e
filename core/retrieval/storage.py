"""Small filesystem helpers for publishing index files safely: atomic writes and an inter-process lock.

A reader never sees a half-written file: content goes to a temporary file in the same folder,
is flushed to disk, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows). Writers (ingest, index rebuilds) take :func:`writer_lock` so two processes never build
the same index at once; readers take no lock.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:  # POSIX advisory locks; elsewhere only threads of one process are serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_THREAD_LOCK = threading.Lock()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk (before the folder is renamed into place)."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@contextmanager
def writer_lock(lock_path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` for the block; yields whether it was acquired.

    With ``blocking=False`` the block runs at once and gets ``False`` if another writer holds it.
    Not re-entrant: do not nest it for the same path.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if not _THREAD_LOCK.acquire(blocking=blocking):
        yield False
        return
    try:
        with open(lock_path, "a+") as f:
            got = True
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    got = False
            try:
                yield got
            finally:
                if got and fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        _THREAD_LOCK.release()
