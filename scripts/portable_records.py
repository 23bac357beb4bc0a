"""Rewrite the paths inside committed records into the portable form new records are written in
(harness.records.portable): relative to the repository, `$REC_BENCH_CACHE/...` inside a cache, else `.../<name>`.

    python scripts/portable_records.py [results]

Records written before that form held the absolute paths of the machine and worktree that made them (a cache under
/root/.cache or /tmp/cacheN, a suite file under a temporary worktree). Only path fields change: weights, data roots,
split roots, the tokenizer, load summaries, suite files; every number stays as the record has it. A cache is
recognised by its layout (`pretrained/<key>/...`, `synth-seed<S>-n<N>/...`), a suite file by `suites/<name>.yaml`.
Idempotent; each file is rewritten atomically, and only if something changed.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from harness.records import portable, portable_text, validate_record, write_json_atomic

CACHE_LAYOUT = re.compile(r"(?:/[^\s/:'\"]+)+?/((?:pretrained|synth-(?:v\d+-)?seed\d+-n\d+)(?:/[^\s:'\",]*)?)")
SUITE_FILE = re.compile(r"(?:/[^\s/:'\"]+)+?/(suites/[\w.-]+\.ya?ml)")


def _path(value):
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    for pattern, label in ((CACHE_LAYOUT, "$REC_BENCH_CACHE/"), (SUITE_FILE, "")):
        m = pattern.fullmatch(value)
        if m:
            return label + m.group(1)
    return portable(value)


def _text(value: str) -> str:
    value = CACHE_LAYOUT.sub(lambda m: "$REC_BENCH_CACHE/" + m.group(1), value)
    return portable_text(value)


def rewrite(record: dict) -> dict:
    weights = record.get("weights") or {}
    for key in ("vision", "language", "init_checkpoint"):
        if key in weights:
            weights[key] = _path(weights[key])
    if isinstance(weights.get("loaded"), list):
        weights["loaded"] = [_text(line) for line in weights["loaded"]]
    desc = record.get("data_desc") or {}
    for key in ("root", "split_root"):
        if key in desc:
            desc[key] = _path(desc[key])
    if "tokenizer" in record:
        record["tokenizer"] = _path(record["tokenizer"])
    if "suite_file" in record:
        record["suite_file"] = _path(record["suite_file"])
    return record


def main(root="results") -> None:
    changed = 0
    for path in sorted(Path(root).rglob("*.json")):
        text = path.read_text()
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("kind") not in ("run", "profile", "baseline", "suite"):
            continue
        new = rewrite(json.loads(text))
        if new != record:
            if new["kind"] != "suite":
                validate_record(new, str(path))
            write_json_atomic(path, new)
            changed += 1
    print(f"rewrote the paths of {changed} record(s) under {root}")


if __name__ == "__main__":
    main(*sys.argv[1:])
