"""Exclusive folder locks (flock): a second holder refuses in one line naming the first one's pid. The kernel
releases a lock when its holder dies, so a killed process leaves no stale lock behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError


class FolderLock:
    """Held for a with-block on `folder/name`; `busy(pid)` words the refusal. `active=False` holds nothing (a DDP
    rank other than 0)."""

    def __init__(self, folder: Path, name: str, busy: Callable[[str], str], active: bool = True):
        self.path, self.busy, self.active, self.fd = Path(folder) / name, busy, active, None

    def __enter__(self):
        if not self.active:
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HarnessError(self.busy(holder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
