"""Folder writes that never leave half a result: build in a temporary sibling, then rename into place."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from datasets.errors import DataError


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
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing target is moved aside first and removed after."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, aside / "x")
        os.replace(new, target)
        shutil.rmtree(aside)
    else:
        os.replace(new, target)


def replace_entries(src: Path, dst: Path, entries) -> None:
    """Move each of `entries` (paths relative to `src`) into `dst`, replacing what is there under the same path and
    leaving everything else in `dst`; each replacement is a rename."""
    for rel in entries:
        target = Path(dst) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(Path(src) / rel, target)


# how torch.save words a failed write (RuntimeError): its zip writer, its file stream
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "iostream error", "file write failed")


def check_writable(folder, fix: str) -> None:
    """Create `folder` and write a file in it now, so that a folder that cannot take the results fails before the
    work, not after it (`fix`: what to do instead, e.g. "choose another --record")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise DataError(f"cannot write to {folder}: {err.strerror}; {fix}") from None


def write_error(err: BaseException, path, full: bool) -> OSError | None:
    """The one-line error for a failed write of `path` (None: not a write failure). torch.save reports a failed write
    as a RuntimeError ("inline_container.cc: unexpected pos"), and a failed write() names no file. `full`: whether
    the folder had under 1 MiB free when it failed (measured before a temp file gave its space back)."""
    if isinstance(err, OSError):
        return err if err.filename else OSError(err.errno, err.strerror, str(path))
    if isinstance(err, RuntimeError) and any(m in str(err) for m in TORCH_WRITE_FAILURES):
        code = errno.ENOSPC if full else errno.EIO
        return OSError(code, os.strerror(code) if full else f"write failed ({str(err).splitlines()[0]})", str(path))
    return None


def disk_full(folder) -> bool:
    return shutil.disk_usage(folder).free < 1 << 20


def save_torch(obj, path: Path) -> None:
    """torch.save, a failed write raised as an OSError naming `path`."""
    import torch

    try:
        torch.save(obj, path)
    except (OSError, RuntimeError) as err:
        mapped = write_error(err, path, disk_full(Path(path).parent))
        if mapped is None:
            raise
        raise mapped from None
