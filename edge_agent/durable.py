"""Files written whole or not at all, and renames that survive a power cut."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_durably(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write`` into a fresh temporary name, fsync, rename over ``path``: readers never see half a file."""
    # A fresh name opened with "x" (not mkstemp) so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new or renamed files) durable, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself still happened
    finally:
        os.close(fd)
