"""Atomic file writes: a temporary file beside the target, renamed over it when complete.

A crash or a stopped job at any moment leaves either the old file or the new one, never a torn file
that a restart would take as done. The file gets the mode a plain ``open`` would give it (0666
less the umask): ``tempfile.mkstemp`` alone creates files only their owner can read.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file for writing (``mode`` "w" for UTF-8 text or "wb"); on a clean exit it
    replaces ``path``; on an error it is removed and ``path`` is untouched. ``fsync``: flush the file
    and its folder to disk too (checkpoints and models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
