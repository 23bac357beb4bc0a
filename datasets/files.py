"""Folder writes that never leave half a result: build in a temporary sibling, then rename into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """tempfile.mkdtemp, but with the mode a plain mkdir gives (0777 less the umask: 0755 under umask 022), since the
    folder is renamed into place and kept; mkdtemp's private 0700 would hide a shared dataset from other users."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


@contextmanager
def building(target: Path):
    """Yields an empty temporary folder beside `target`; on success it replaces `target` (an existing one is moved
    aside first and removed after), on failure it is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".{target.name}.", ".tmp")
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_entries(src: Path, dst: Path, entries) -> None:
    """Move each of `entries` (paths relative to `src`) into `dst`, replacing what is there under the same path and
    leaving everything else in `dst`; each replacement is a rename (an old entry is moved aside, then removed)."""
    for rel in entries:
        new, old = Path(src) / rel, Path(dst) / rel
        old.parent.mkdir(parents=True, exist_ok=True)
        if old.exists():
            aside = temp_dir(old.parent, f".{old.name}.", ".old")
            os.replace(old, aside / "x")
            os.replace(new, old)
            shutil.rmtree(aside)
        else:
            os.replace(new, old)
