"""Read TransVG's index files (`{split_root}/{name}/{name}_{split}.pth`) into records, as its loader does.

Every record TransVG loads is kept, so a split is scored on the same n. That includes records no model can get
right on merit (`oddity`): an empty expression (nothing to ground) and a box without area after TransVG's integer
truncation (an IoU of 0 with any prediction). They are counted at load (one warning line per split file) and
listed by `harness data check`. Refused, in one line, are records TransVG could not use either: wrong types, a
box that is not 4 finite numbers, or one with a negative coordinate or extent (REFER's and Berkeley's boxes never
give one, and TransVG's GIoU asserts on it: utils/box_utils.py generalized_box_iou @c862427).
"""
from __future__ import annotations

import math
import sys
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


def oddity(record: Record) -> str:
    """Why a record TransVG keeps gives a model nothing to ground or no box to hit ("" for a normal record)."""
    x1, y1, x2, y2 = record.box
    if not record.phrase.strip():
        return "empty referring expression"
    if x1 == x2 or y1 == y2:
        return f"box {[int(v) for v in record.box]} (xyxy) has no area"
    return ""


def load_split(paths: DataPaths, name: str, split: str, warn: bool = True) -> list[Record]:
    """The split's records in file order. `warn`: one line on stderr per file that holds odd records."""
    records: list[Record] = []
    for path in split_files(paths, name, split):
        part = _parse(path, name, _load(path, paths.trust_pickles))
        odd = sum(bool(oddity(r)) for r in part)
        if odd and warn:
            print(f"warning: {path} holds {odd} of {len(part)} records with an empty expression or a box without "
                  "area; kept, as TransVG keeps them (`harness data check` lists them)", file=sys.stderr, flush=True)
        records += part
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
        if not (0 <= x1 <= x2 and 0 <= y1 <= y2):
            raise DataError(f"index file {path} record {row}: box {_short(bbox)} ({spec.bbox_format}) is "
                            f"{[int(v) for v in box]} as xyxy after TransVG's integer truncation: a negative "
                            f"coordinate or extent, which no REFER box gives; fix or regenerate the index "
                            f"({INDEX_SOURCE})")
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
