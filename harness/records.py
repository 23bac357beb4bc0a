"""Run records: one JSON per run, written atomically, validated on read. Tables are built only from these.

A record says what ran (method, dataset, data kind, preset, recipe, weights), on what (commit, dirty
flag, package versions, device), and what came out (parameter counts, FLOPs, memory, time, accuracy
and mean IoU per split, status, error)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from datasets.files import disk_full, write_error
from harness.errors import HarnessError

SCHEMA_VERSION = 1
# field -> type(s) every record must have; `results` maps split -> {accuracy, miou, n} and, in run records since
# issue 28, `outcomes`: every expression's hit (harness.evaluate.pack_outcomes), what paired statistics read
REQUIRED = {
    "schema": int, "kind": str, "run_id": str, "method": str, "method_config": dict, "dataset": str,
    "dataset_label": str, "data": str, "preset": str, "recipe": dict, "weights": dict, "env": dict,
    "params": dict, "flops": dict, "memory": dict, "time": dict, "results": dict, "status": str,
    "error": (str, type(None)), "created_at": str, "config_hash": str,
}
STATUSES = ("ok", "failed", "interrupted")
# nested fields the tables and `select` read: (path, type(s)), checked where present
NESTED = ((("env", "git"), dict), (("train",), dict), (("train", "history"), list), (("recipe", "seed"), int),
          (("recipe", "epochs"), int), (("recipe", "batch_size"), int), (("recipe", "lr"), (int, float)),
          (("recipe", "lr_encoder"), (int, float)), (("recipe", "amp"), bool))
COUNTS = ("encoder_side_trainable", "trainable", "total")  # params of a finished run or profile
PACKAGES = ("torch", "torchvision", "timm", "transformers", "peft", "fvcore", "numpy")


REPO = Path(__file__).resolve().parents[1]


def _roots() -> list[tuple[Path, str]]:
    """(folder, how a record names it): the repository (relative paths) and the cache ($REC_BENCH_CACHE)."""
    from harness.device import DEFAULT_CACHE

    cache = Path(os.environ.get("REC_BENCH_CACHE") or DEFAULT_CACHE)
    return [(REPO, ""), (cache.absolute(), "$REC_BENCH_CACHE/")]


def portable(path) -> str | None:
    """A path as a record keeps it: relative to the repository when inside it, `$REC_BENCH_CACHE/...` inside the
    cache, and otherwise `.../<name>` (what it is, not where this machine keeps it); a relative path as given."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    for root, label in _roots():
        try:
            return label + str(p.absolute().relative_to(root)) if p.absolute() != root else (label.rstrip("/") or ".")
        except ValueError:
            continue
    return f".../{p.name}"


def portable_text(text: str) -> str:
    """`text` with the repository's and the cache's absolute folders written as portable() writes them."""
    for root, label in sorted(_roots(), key=lambda r: -len(str(r[0]))):
        text = text.replace(f"{root}/", label or "").replace(str(root), label.rstrip("/") or ".")
    return text


def config_hash(config: dict) -> str:
    """Stable hash of what defines a run, so a resumed or skipped run can prove it is the same run."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_state(cwd=None) -> dict:
    """Commit and dirty flag of the code that ran. Where the code travels without its .git folder (a copy of
    the tree on a GPU machine), REC_BENCH_GIT_COMMIT / REC_BENCH_GIT_DIRTY set by the sender say it."""
    if os.environ.get("REC_BENCH_GIT_COMMIT"):
        return {"commit": os.environ["REC_BENCH_GIT_COMMIT"],
                "dirty": os.environ.get("REC_BENCH_GIT_DIRTY", "1") != "0", "source": "environment"}
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        # results/ holds what the code writes (records, tables), not code: rewriting it leaves the code clean
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)results"], cwd=cwd, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def environment(device=None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(dev))
    else:
        name = platform.processor() or platform.machine()
        name = f"CPU ({name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {"git": git_state(), "packages": versions, "python": platform.python_version(),
            "device": dev, "device_name": name, "cuda": torch.version.cuda,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path, write) -> Path:
    """`write(tmp_path)` fills a temp file in the same folder, which is then renamed to `path`: a reader never sees
    half a file. The file gets the mode a plain open() would give it (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        full = disk_full(path.parent)  # before the temp file gives its space back
        Path(tmp).unlink(missing_ok=True)
        mapped = write_error(err, path, full)
        if mapped is None or mapped is err:
            raise
        raise mapped from None
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path, data: dict) -> Path:
    """allow_nan=False: a NaN or inf would be written as bare NaN / Infinity, which is not JSON (a ValueError here)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def validate_record(record, source="record") -> dict:
    if not isinstance(record, dict):
        raise HarnessError(f"{source}: not a JSON object")
    for key, types in REQUIRED.items():
        if key not in record:
            raise HarnessError(f"{source}: missing field '{key}' (regenerate it with `harness run`)")
        if not isinstance(record[key], types):
            raise HarnessError(f"{source}: field '{key}' has type {type(record[key]).__name__}")
    if record["schema"] != SCHEMA_VERSION:
        raise HarnessError(f"{source}: schema {record['schema']}, this code reads {SCHEMA_VERSION}")
    if record["status"] not in STATUSES:
        raise HarnessError(f"{source}: status '{record['status']}' is not one of {STATUSES}")
    for path, types in NESTED:
        parent = record
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(path[-1]) if isinstance(parent, dict) else None
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) and types is not bool):
            raise HarnessError(f"{source}: field '{'.'.join(path)}' is {value!r} ({type(value).__name__}): a damaged "
                               "or hand-edited record; rerun its run")
    if record["kind"] in ("run", "profile") and record["status"] == "ok":
        bad = [k for k in COUNTS if isinstance(record["params"].get(k), bool)
               or not isinstance(record["params"].get(k), int)]
        if bad:
            raise HarnessError(f"{source}: params.{bad[0]} is {record['params'].get(bad[0])!r}, not a count: a "
                               "damaged or hand-edited record; rerun its run")
    for split, res in record["results"].items():
        if not isinstance(res, dict) or not {"accuracy", "miou", "n"} <= set(res):
            raise HarnessError(f"{source}: results['{split}'] needs accuracy, miou and n")
        bad = [k for k in ("accuracy", "miou", "n") if isinstance(res[k], bool) or not isinstance(res[k], (int, float))]
        if bad:
            raise HarnessError(f"{source}: results['{split}'] {bad[0]} is {res[bad[0]]!r}, not a number")
        bad = [k for k in ("accuracy", "miou") if not 0 <= res[k] <= 1] + ([] if res["n"] >= 1 else ["n"])
        if bad:  # NaN fails 0 <= x <= 1 too
            raise HarnessError(f"{source}: results['{split}'] {bad[0]} is {res[bad[0]]!r}: accuracy and mIoU lie in "
                               "[0, 1] and n is at least 1 (a damaged or hand-edited record: rerun its run)")
        outcomes = res.get("outcomes")
        if outcomes is not None and not (isinstance(outcomes, str) and len(outcomes) == 2 * -(-res["n"] // 8)
                                         and all(c in "0123456789abcdef" for c in outcomes)
                                         and abs(bin(int(outcomes or "0", 16)).count("1") / res["n"]
                                                 - res["accuracy"]) < 1e-9):
            raise HarnessError(f"{source}: results['{split}'] outcomes is not the hex of {res['n']} packed bits whose "
                               "hits give its accuracy (a damaged or hand-edited record: rerun its run)")
    return record


def read_record(path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"record {path} not found") from None
    except json.JSONDecodeError as err:
        raise HarnessError(f"record {path} is not valid JSON ({err.msg} at line {err.lineno}): "
                           "delete it and rerun its run") from None
    return validate_record(record, str(path))


def up_to_date(path, config_hash: str) -> dict | None:
    """The record at `path` if it finished ("ok") with this configuration hash; None if it is missing, unreadable,
    failed or of another configuration (the `--skip-done` test of runs and profiles)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        previous = read_record(path)
    except HarnessError:
        return None  # unreadable: redo it
    return previous if previous["status"] == "ok" and previous["config_hash"] == config_hash else None


def load_records(folder) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError(f"no run records in {folder}: run `harness run ...` or ./run_all.sh first")
    return [read_record(p) for p in sorted(folder.glob("*.json"))]


def baseline_records(dataset: str, results: dict, paths) -> list[dict]:
    """One record (kind "baseline") per text-blind rule of `harness data baseline`: the floor rows of the tables."""
    from datasets.baseline import RULES
    from datasets.catalog import get_spec

    synthetic = (paths.split_root.parent / "scenes.json").is_file()
    label = get_spec(dataset).label
    out = []
    for rule in RULES:
        out.append({
            "schema": SCHEMA_VERSION, "kind": "baseline", "run_id": f"{dataset.replace('+', 'plus')}_textblind-{rule}",
            "method": f"text-blind: {rule}", "method_config": {"rule": rule}, "dataset": dataset,
            "dataset_label": f"synthetic ({label}-style)" if synthetic else label,
            "data": "synthetic" if synthetic else "real", "data_desc": {"split_root": portable(paths.split_root)},
            "preset": "any", "recipe": {}, "weights": {}, "env": environment(), "params": {}, "flops": {},
            "memory": {}, "time": {},
            "results": {s: {"accuracy": r[rule], "miou": r["miou"][rule], "n": r["n"]} for s, r in results.items()},
            "status": "ok", "error": None, "created_at": now(),
            "config_hash": config_hash({"dataset": dataset, "rule": rule, "root": str(paths.split_root)}),
            "what": "text-blind pick among the boxes the index refers to on the image (datasets/baseline.py); no "
                    "model, no training: the floor a REC result must clear",
        })
    return out
