"""Downloads that survive real networks: resume from a partial file, retries with back-off, mirrors, checksums.

A file is written as `<name>.part` and renamed to `<name>` only when it is complete and verified, so a good file is
never replaced by a partial or corrupt one. Verification, in order of what the manifest gives: the published
SHA-256, the SHA-256 prefix a file name carries (DETR's `detr-r50-e632da11.pth`, as torch.hub checks it), the
published MD5, the size. Where nothing is published, the SHA-256 of the first complete download is written beside
the file (`<name>.sha256`) and every later use verifies against it. A verified file is never fetched again.

An interrupted download resumes with an HTTP Range request from the bytes already in `.part` (a server that
ignores Range sends the whole file, which then starts over); a dropped connection is retried `retries` times with
exponential back-off, then the next URL (mirror) is tried. A 404 moves on to the next URL at once. A download
whose checksum does not match is kept aside as `<name>.bad` (never used) and reported in one line.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from datasets.errors import DataError
from datasets.files import check_writable, write_error

CHUNK = 1 << 20
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    """Where the SHA-256 of a file without a published checksum is recorded at its first download."""
    return path.with_name(path.name + ".sha256")


def verify(path: Path, entry: dict) -> str | None:
    """None when `path` is the manifest entry's file; else why not, in a few words."""
    size = entry.get("size")
    if size is not None and path.stat().st_size != size:
        return f"{path.stat().st_size:,} bytes, expected {size:,}"
    checks = [("sha256", entry.get("sha256"), False), ("sha256", entry.get("sha256_prefix"), True),
              ("md5", entry.get("md5"), False)]
    if not any(value for _, value, _ in checks) and sidecar(path).is_file():
        checks = [("sha256", sidecar(path).read_text().split()[0], False)]
    for algorithm, value, prefix in checks:
        if value:
            got = digest(path, algorithm)
            if not (got.startswith(value.lower()) if prefix else got == value.lower()):
                return f"{algorithm} {got[:16]}..., expected {value[:16]}{'' if prefix else '...'}"
            return None
    return None


def _published(entry: dict) -> bool:
    return any(entry.get(k) for k in ("sha256", "sha256_prefix", "md5"))


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    return urllib.request.urlopen(request, timeout=timeout)


def _get(url: str, part: Path, size: int | None, timeout: float, log) -> None:
    """Append to `part` from where it ends (or start over if the server ignores the Range)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the range starts past the end: what .part holds is the whole file
            return
        raise
    with response:
        if offset and response.status != 206:
            log(f"note: {url} ignores Range requests; downloading from the start")
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                         desc=part.name.removesuffix(".part"), leave=False, disable=None) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
        got = part.stat().st_size
        if total is not None and got < total:  # the connection closed early without an error
            raise ConnectionError(f"connection closed after {got:,} of {total:,} bytes")


def _from(url: str, part: Path, size, retries: int, backoff: float, timeout: float, failures: list, log) -> bool:
    """Download (or resume) from one URL, retrying transient failures; False (with the reason in `failures`) when
    this URL cannot give the file."""
    for attempt in range(retries + 1):
        try:
            log(f"{part.name.removesuffix('.part')}: {'resuming' if part.exists() else 'downloading'} from {url}")
            _get(url, part, size, timeout, log)
            return True
        except urllib.error.HTTPError as err:  # 404, 403, ...: this URL will not get better
            failures.append(f"{url}: HTTP {err.code} {err.reason}")
            return False
        except TRANSIENT as err:
            if attempt == retries:
                failures.append(f"{url}: {type(err).__name__}: {err} ({retries + 1} attempts)")
                return False
            wait = backoff * 2 ** attempt
            log(f"{type(err).__name__}: {err}; retrying in {wait:g} s from byte "
                f"{part.stat().st_size if part.exists() else 0:,}")
            time.sleep(wait)
        except OSError as err:  # writing .part (a full disk): the CLI's one line names the file and the fix
            raise (write_error(err, part, full=False) or err) from None
    return False


def fetch_file(entry: dict, folder, *, mirror: str | None = None, from_dir=None, retries: int = 3,
               backoff: float = 1.0, timeout: float = 60.0, log=print) -> Path:
    """The manifest entry's file in `folder` (or in `from_dir`, used in place), verified; downloaded if needed."""
    name = entry["name"]
    folder = Path(folder)
    if from_dir is not None:
        local = Path(from_dir) / name
        if not local.is_file():
            raise DataError(f"--from-dir {from_dir} has no {name}: download it there from "
                            f"{entry['urls'][0]} (or drop --from-dir)")
        why = verify(local, entry)
        if why:
            raise DataError(f"{local} is not the expected {name} ({why}): download it again")
        if not _published(entry) and not sidecar(local).is_file():
            log(f"note: no published checksum for {name}; the copy in --from-dir is taken as it is")
        log(f"{name}: verified in {from_dir}")
        return local
    target = folder / name
    if target.is_file():
        why = verify(target, entry)
        if why is None:
            log(f"{name}: already here, verified")
            return target
        raise DataError(f"{target} exists but is not the expected file ({why}): move it away and fetch again")
    check_writable(folder, "choose a folder you can write to")
    part = folder / f"{name}.part"
    urls = ([f"{mirror.rstrip('/')}/{name}"] if mirror else []) + list(entry["urls"])
    failures = []
    url = next((u for u in urls if _from(u, part, entry.get("size"), retries, backoff, timeout, failures, log)), None)
    if url is None:
        raise DataError(f"could not download {name}: " + "; ".join(failures))
    why = verify(part, entry)
    if why:
        bad = folder / f"{name}.bad"
        os.replace(part, bad)
        raise DataError(f"{name} from {url} does not match the manifest ({why}); kept aside as {bad}, not used: "
                        "delete it and fetch again, or use --mirror")
    if not _published(entry):
        sidecar(target).write_text(f"{digest(part)}  {name}\n")
        log(f"note: no published checksum for {name}; recorded the SHA-256 of this download in "
            f"{sidecar(target).name}")
    os.replace(part, target)
    log(f"{name}: downloaded and verified")
    return target

