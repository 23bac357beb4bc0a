"""Read TransVG's index files (`{split_root}/{name}/{name}_{split}.pth`) into records, as its loader does."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.catalog import INDEX_SOURCE, DataPaths, get_spec
from datasets.errors import DataError
from datasets.safe_load import UnsafeFileError, torch_load

@dataclass(frozen=True)
class Record:
    image_file: str
    box: tuple[float, float, float, float]  # xyxy pixels
    phrase: str
    # Where the record came from, so a later failure (e.g. its image) can name the index file and row.
    source: str = field(default="", compare=False)
    row: int = field(default=-1, compare=False)


def split_files(paths: DataPaths, name: str, split: str) -> list[Path]:
    spec = get_spec(name)
    if split not in spec.splits:
        raise DataError(f"dataset {name} has no split {split!r}: its splits are {', '.join(spec.splits)}")
    # TransVG: referit ships its own referit_trainval.pth, the others concatenate train and val.
    parts = ["train", "val"] if split == "trainval" and name != "referit" else [split]
    return [paths.index_dir(name) / f"{name}_{part}.pth" for part in parts]


def load_split(paths: DataPaths, name: str, split: str) -> list[Record]:
    records: list[Record] = []
    for path in split_files(paths, name, split):
        records += _parse(path, name, _load(path, paths.trust_pickles))
    return records


def _load(path: Path, trust: bool = False):
    if not path.parent.is_dir():
        raise DataError(f"index file {path} not found: there is no index folder {path.parent}; {INDEX_SOURCE}")
    if not path.is_file():
        raise DataError(f"index file {path} not found; {INDEX_SOURCE}")
    try:
        return torch_load(path, trust, what="index file")
    except UnsafeFileError:
        raise
    except Exception as err:
        raise DataError(f"index file {path} is corrupt or not a torch file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); re-download or regenerate it "
                        f"({INDEX_SOURCE})") from None


def _parse(path: Path, name: str, data) -> list[Record]:
    spec = get_spec(name)
    layout = "(img_file, bbox, phrase)" if spec.tuple_len == 3 else "(img_file, _, bbox, phrase, _)"
    if not isinstance(data, (list, tuple)):
        raise DataError(f"index file {path} holds a {type(data).__name__}, expected a list of {layout} "
                        f"tuples; {INDEX_SOURCE}")
    records = []
    for row, item in enumerate(data):
        if not isinstance(item, (list, tuple)) or len(item) != spec.tuple_len:
            raise DataError(f"index file {path} record {row}: expected a {spec.tuple_len}-tuple {layout}, got "
                            f"{_short(item)}; regenerate the index ({INDEX_SOURCE})")
        img_file, bbox, phrase = (item[0], item[1], item[2]) if spec.tuple_len == 3 else (item[0], item[2], item[3])
        problem = _problem(img_file, bbox, phrase)
        if problem:
            raise DataError(f"index file {path} record {row}: {problem}; regenerate the index ({INDEX_SOURCE})")
        # np.array(..., dtype=int) truncates float COCO boxes exactly as TransVG's pull_item does.
        box = np.array(bbox, dtype=int)
        if spec.bbox_format == "xywh":
            box[2], box[3] = box[0] + box[2], box[1] + box[3]
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 and 0 <= y1 < y2) or not phrase.strip():
            problem = (f"empty referring expression {phrase!r}" if not phrase.strip() else
                       f"box {_short(bbox)} ({spec.bbox_format}) is {[int(v) for v in box]} as xyxy after TransVG's "
                       "integer truncation: negative or without area")
            raise DataError(f"index file {path} record {row}: {problem}; fix or regenerate the index "
                            f"(`harness data check` lists every record)")
        records.append(Record(img_file, tuple(float(v) for v in box), phrase.lower(), str(path), row))
    return records


def _problem(img_file, bbox, phrase) -> str:
    if not isinstance(img_file, str) or not img_file:
        return f"image file name must be a non-empty string, got {_short(img_file)}"
    if not isinstance(phrase, str):
        return f"phrase must be a string, got {_short(phrase)}"
    try:
        values = [float(v) for v in np.asarray(bbox, dtype=float).reshape(-1)]
    except (TypeError, ValueError):
        return f"bbox must be 4 numbers, got {_short(bbox)}"
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return f"bbox must be 4 finite numbers, got {_short(bbox)}"
    return ""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
