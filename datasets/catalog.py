"""The dataset registry (TransVG's SUPPORTED_DATASETS plus what papers report) and where a data root keeps things.

A data root holds `data/` (the index, TransVG's --split_root) and `ln_data/` (the images, TransVG's --data_root).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets.errors import DataError

COCO_TRAIN2014 = "other/images/mscoco/images/train2014"
INDEX_SOURCE = (
    "get TransVG's data index tarball (docs/GETTING_STARTED.md, untar it as ROOT/data) and the images "
    "(ln_data/download_data.sh) into ROOT/ln_data, or write synthetic data with `harness data synth --root ROOT`"
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label: str
    splits: tuple[str, ...]
    eval_splits: tuple[str, ...]
    bbox_format: str  # 'xywh' (COCO annotations) or 'xyxy'
    image_dir: str  # relative to the image root
    max_query_len: int = 20
    tuple_len: int = 5

    @property
    def distinct_splits(self) -> tuple[str, ...]:
        """The splits without trainval, which repeats train and val (referit's own trainval file included)."""
        return tuple(s for s in self.splits if s != "trainval")


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("unc", "RefCOCO", ("train", "val", "trainval", "testA", "testB"),
                    ("val", "testA", "testB"), "xywh", COCO_TRAIN2014),
        DatasetSpec("unc+", "RefCOCO+", ("train", "val", "trainval", "testA", "testB"),
                    ("val", "testA", "testB"), "xywh", COCO_TRAIN2014),
        DatasetSpec("gref", "RefCOCOg (google)", ("train", "val"), ("val",), "xywh", COCO_TRAIN2014,
                    max_query_len=40),
        DatasetSpec("gref_umd", "RefCOCOg (umd)", ("train", "val", "test"), ("val", "test"), "xywh",
                    COCO_TRAIN2014, max_query_len=40),
        DatasetSpec("referit", "ReferItGame", ("train", "val", "trainval", "test"), ("val", "test"), "xyxy",
                    "referit/images"),
        DatasetSpec("flickr", "Flickr30k", ("train", "val", "test"), ("val", "test"), "xyxy",
                    "Flickr30k/flickr30k_images", tuple_len=3),
    )
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: known names are {', '.join(DATASETS)}") from None


@dataclass(frozen=True)
class DataPaths:
    split_root: Path
    image_root: Path
    image_dirs: dict[str, str] = field(default_factory=dict)  # per-name override of DatasetSpec.image_dir
    trust_pickles: bool = False  # index files that need the full unpickler (datasets/safe_load.py) are allowed

    def index_dir(self, name: str) -> Path:
        return self.split_root / name

    def image_dir(self, name: str) -> Path:
        return self.image_root / self.image_dirs.get(name, get_spec(name).image_dir)


def resolve_paths(data_root=None, split_root=None, image_root=None, image_dirs=None,
                  trust_pickles: bool = False) -> DataPaths:
    """`image_dirs` maps a dataset name to its image folder under the image root (M2IST keeps COCO in
    'other/images/train2014')."""
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist: it should hold data/ (the index) and ln_data/ "
                            f"(the images); {INDEX_SOURCE}")
    elif split_root is None or image_root is None:
        raise DataError("no data root given: pass a data root or both an index folder and an image folder")
    split = Path(split_root) if split_root is not None else root / "data"
    images = Path(image_root) if image_root is not None else root / "ln_data"
    if not split.is_dir():
        raise DataError(f"index folder {split} does not exist: it should hold <name>/<name>_<split>.pth; "
                        f"{INDEX_SOURCE}")
    if not images.is_dir():
        raise DataError(f"image folder {images} does not exist: it should hold {COCO_TRAIN2014}/ (COCO) and "
                        f"referit/images/; {INDEX_SOURCE}")
    for name in image_dirs or {}:
        get_spec(name)
    return DataPaths(split, images, dict(image_dirs or {}), trust_pickles)
