"""`harness data check`: count a dataset's records and validate every one (image, box, expression)."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from datasets.catalog import get_spec, resolve_paths
from datasets.errors import DataError
from datasets.index import load_split


@dataclass(frozen=True)
class SplitCounts:
    split: str
    records: int
    images: int


@dataclass(frozen=True)
class CheckReport:
    name: str
    label: str
    split_root: str
    image_dir: str
    splits: tuple[SplitCounts, ...]
    images: int  # distinct images over all splits


def check_dataset(root, name: str, split_root=None, image_root=None) -> CheckReport:
    spec = get_spec(name)
    paths = resolve_paths(root, split_root, image_root)
    image_dir = paths.image_dir(name)
    sizes: dict[str, tuple[int, int]] = {}  # each image is opened once, however many records use it
    counts = []
    # trainval is train + val (or, for referit, a file holding the same records), so it is not counted again.
    for split in (s for s in spec.splits if s != "trainval"):
        records = load_split(paths, name, split)
        for record in records:
            where = f"index file {record.source} record {record.row}"
            if record.image_file not in sizes:
                path = image_dir / record.image_file
                try:
                    with Image.open(path) as img:
                        img.load()
                        sizes[record.image_file] = img.size
                except (OSError, ValueError) as err:
                    problem = "not found" if isinstance(err, FileNotFoundError) else "unreadable"
                    raise DataError(f"{where}: image {path} {problem} ({type(err).__name__}); put the dataset's "
                                    f"images under {image_dir}") from None
            width, height = sizes[record.image_file]
            x1, y1, x2, y2 = record.box
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise DataError(f"{where}: box {list(record.box)} (xyxy) is not inside the {width}x{height} image "
                                f"{record.image_file} with positive area; fix or regenerate the index")
            if not record.phrase.strip():
                raise DataError(f"{where}: empty referring expression; fix or regenerate the index")
        counts.append(SplitCounts(split, len(records), len({r.image_file for r in records})))
    return CheckReport(name, spec.label, str(paths.index_dir(name)), str(image_dir), tuple(counts), len(sizes))


def format_report(report: CheckReport) -> str:
    lines = [f"{report.name} ({report.label}): index {report.split_root}, images {report.image_dir}"]
    lines += [f"  {c.split:<6} {c.records:>7} expressions  {c.images:>6} images" for c in report.splits]
    total = sum(c.records for c in report.splits)
    lines.append(f"  all    {total:>7} expressions  {report.images:>6} distinct images; every record valid")
    return "\n".join(lines)
