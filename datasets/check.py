"""`harness data check`: count a dataset's records and validate every one (image, box, expression), and a data card:
per-split expressions, refs (distinct image + box) and images, set against the published sizes where known, and
the odd records TransVG keeps (empty expression, box without area: `datasets.index.oddity`), each listed."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from datasets.catalog import get_spec, resolve_paths
from datasets.errors import DataError
from datasets.index import load_split, oddity, split_files


# Published expression counts per split. unc: REFER/RefCOCO (Yu et al. 2016), as every REC paper reports them;
# referit: TransVG's referit splits (the Berkeley referit_query_*.json without the 3 images its builder skips),
# counted from ronghanghu/text_objseg's copy of those files. The others are the commonly quoted figures that
# shared/reference/datasets.md lists as unverified; a mismatch is a warning, never an error.
PUBLISHED = {
    "unc": ({"train": 120_624, "val": 10_834, "testA": 5_657, "testB": 5_095}, "RefCOCO (unc), Yu et al. 2016"),
    "referit": ({"train": 54_127, "val": 5_842, "test": 60_103}, "TransVG's ReferItGame splits (Berkeley files)"),
    "unc+": ({"train": 120_191, "val": 10_758, "testA": 5_726, "testB": 4_889}, "commonly quoted, unverified"),
    "gref_umd": ({"train": 80_512, "val": 4_896, "test": 9_602}, "commonly quoted, unverified"),
    "gref": ({"val": 9_536}, "commonly quoted, unverified"),
}


@dataclass(frozen=True)
class SplitCounts:
    split: str
    records: int
    images: int
    refs: int = 0  # distinct (image, box): the referred objects
    odd: tuple[str, ...] = ()  # "index file F record R: why", for every record `oddity` flags


@dataclass(frozen=True)
class CheckReport:
    name: str
    label: str
    split_root: str
    image_dir: str
    splits: tuple[SplitCounts, ...]
    images: int  # distinct images over all splits
    synthetic: bool = False  # `harness data synth` wrote it (its scenes.json): no published sizes apply


def check_dataset(root, name: str, split_root=None, image_root=None) -> CheckReport:
    spec = get_spec(name)
    paths = resolve_paths(root, split_root, image_root)
    image_dir = paths.image_dir(name)
    sizes: dict[str, tuple[int, int]] = {}  # each image is opened once, however many records use it
    counts = []
    # trainval is train + val (or, for referit, a file holding the same records), so it is not counted again.
    for split in spec.distinct_splits:
        records = load_split(paths, name, split, warn=False)  # the card lists them instead
        if not records:
            raise DataError(f"the {split} split of {name} ({', '.join(map(str, split_files(paths, name, split)))}) "
                            "holds no records: a split a model trains or is scored on cannot be empty")
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
            if not (x2 <= width and y2 <= height):  # the loader refused negative coordinates and extents
                raise DataError(f"{where}: box {list(record.box)} (xyxy) is not inside the {width}x{height} image "
                                f"{record.image_file}; fix or regenerate the index")
        odd = tuple(f"index file {r.source} record {r.row}: {oddity(r)}" for r in records if oddity(r))
        counts.append(SplitCounts(split, len(records), len({r.image_file for r in records}),
                                  len({(r.image_file, r.box) for r in records}), odd))
    return CheckReport(name, spec.label, str(paths.index_dir(name)), str(image_dir), tuple(counts), len(sizes),
                       (paths.split_root.parent / "scenes.json").is_file())


def _published(report: CheckReport):
    return ({}, "") if report.synthetic else PUBLISHED.get(report.name, ({}, ""))


def size_warnings(report: CheckReport) -> list[str]:
    """One line per split whose expression count differs from the published one."""
    published, source = _published(report)
    return [f"warning: {report.name} {c.split} has {c.records:,} expressions, the published size is "
            f"{published[c.split]:,} ({source})" for c in report.splits
            if c.split in published and c.records != published[c.split]]


def format_report(report: CheckReport) -> str:
    published, source = _published(report)
    lines = [f"{report.name} ({report.label}): index {report.split_root}, images {report.image_dir}"]
    for c in report.splits:
        known = published.get(c.split)
        note = "" if known is None else ("  = published" if known == c.records else f"  published: {known:,}")
        odd = f"  {len(c.odd):,} odd" if c.odd else ""
        lines.append(f"  {c.split:<6} {c.records:>7,} expressions  {c.refs:>6,} refs  {c.images:>6,} images{odd}{note}")
    total = sum(c.records for c in report.splits)
    odd = [line for c in report.splits for line in c.odd]
    validity = "every record valid" if not odd else \
        f"every record readable, {len(odd):,} odd (kept, as TransVG keeps them)"
    lines.append(f"  all    {total:>7,} expressions  {report.images:>6,} distinct images; {validity}")
    lines += [f"  odd: {line}" for line in odd]
    if published:
        lines.append(f"  published sizes: {source}")
    elif report.synthetic:
        lines.append(f"  synthetic set (harness data synth): not {report.label}, no published sizes apply")
    return "\n".join(lines + size_warnings(report))
