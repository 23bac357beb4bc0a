"""`harness data prepare`: TransVG's index (DATA/data/<name>/<name>_<split>.pth) from the raw annotations users can
still get, since the links to TransVG's prepared data.tar are dead (djiajunustc/TransVG issues #49, #7, #9, #24).

Sources:
- `refer`: the REFER API's data folder (github.com/lichengunc/refer @e3bbaa3): DIR/<dataset>/refs(<split_by>).p
  (a Python 2 pickle: a list of refs {ref_id, ann_id, image_id, split, file_name, sentences: [{sent, ...}]}) and
  DIR/<dataset>/instances.json (COCO-style images / annotations / categories; boxes are xywh).
- `mdetr`: MDETR's fine-tuning annotations (github.com/ashkamath/mdetr @ea09acc, datasets/refexp.py,
  scripts/fine-tuning/refexp_coco_format.py): finetune_<dataset>_<split>.json (or final_<dataset>_<split>.json)
  with one COCO "image" per expression (caption, original_id = COCO image id) and its one annotation (xywh bbox,
  original_id = the REFER ann_id). MDETR's refcocog is the umd split; it has no google split.

The records are those of the public builder TransVG's index descends from (DMS's process_coco as extended by
zyang-ur/onestage_grounding @f75e50a, code/dataset/referit_loader.py L349-392): for each split, the refs whose
`split` equals it, sorted by their `file_name` (stable), one record per sentence, in sentence order:
    (COCO_train2014_%012d.jpg % image_id, "<ann_id>.pth", COCO xywh bbox of ann_id, sentence, "")
The fifth field (TransVG's `attri`) is not read by TransVG's loader and its released value is unknown: "" here.
COCO names write no trainval file (TransVG's loader concatenates train and val).
MDETR's files carry no ref `file_name` (its suffix after the image id orders the refs of one image): refs are
ordered by image id and, within an image, kept in MDETR's order (= the REFER pickle's), which equals the
file_name order wherever the pickle lists an image's refs in that order.

ReferItGame is not built from REFER's refclef: TransVG's referit index comes from the Berkeley split files
(referit_query_{train,val,test}.json + referit_bbox.json: int xyxy boxes from the masks, raw queries;
onestage_grounding f75e50a L311-347), while refclef's boxes come from its instances.json and its sentences are
REFER's processed `sent`. refclef(berkeley) misses the same 3 images as TransVG's referit (REFER README), but that
its boxes and sentences equal TransVG's could not be checked, so REFER's refclef is refused rather than
approximated; `--from berkeley` reads the Berkeley files themselves.

Everything is written into a temporary folder beside the output and renamed into place at the end.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

from datasets.catalog import get_spec
from datasets.errors import DataError
from datasets.files import building, save_torch

COCO_NAME = "COCO_train2014_{:012d}.jpg"
REFER_SOURCES = {"unc": ("refcoco", "unc"), "unc+": ("refcoco+", "unc"), "gref": ("refcocog", "google"),
                 "gref_umd": ("refcocog", "umd")}
MDETR_SOURCES = {"unc": "refcoco", "unc+": "refcoco+", "gref_umd": "refcocog"}
REFERIT_REFUSAL = ("TransVG's referit index comes from the Berkeley ReferItGame split files (referit_query_*.json, "
                   "referit_bbox.json), not from REFER's refclef, whose boxes and sentences could not be checked to "
                   "match it: use --from berkeley --berkeley-root DIR")


class _RefsUnpickler(pickle.Unpickler):
    """REFER's refs hold only lists, dicts, strings and numbers: no class may be loaded, so no code can run."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a REFER refs file holds only plain values")


def load_refs(path: Path, log=print) -> list:
    """A REFER refs(*.p) file. Written by Python 2's cPickle, whose `str` values arrive as byte strings: they are
    read as UTF-8 (a default pickle.load reads them as ASCII and fails on the first accented word); a file whose
    bytes are not UTF-8 is read as Latin-1, with a warning."""
    if not path.is_file():
        raise DataError(f"REFER refs file {path} not found: --refer-root is REFER's data folder, holding "
                        f"<dataset>/refs(<split_by>).p (github.com/lichengunc/refer, data/README.md)")
    for encoding in ("utf-8", "latin1"):
        try:
            with open(path, "rb") as f:
                refs = _RefsUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise DataError(f"REFER refs file {path} is corrupt or not a refs pickle ({type(err).__name__}: "
                            f"{str(err)[:120]}); download it again") from None
        if encoding != "utf-8":
            log(f"warning: {path} holds byte strings that are not UTF-8; read them as Latin-1")
        break
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"REFER refs file {path} holds a {type(refs).__name__}, expected a list of ref dicts")
    return refs


def load_json(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not valid JSON ({err}); download it again") from None


def _row(image: str, ann: str, box, sentence, where: str) -> tuple:
    """One index record, checked as it is built: a box of 4 finite numbers and a string sentence (a string box or
    a query given as one string would otherwise become lists of characters)."""
    if isinstance(box, (str, bytes)) or not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise DataError(f"{where}: box {box!r} is not 4 finite numbers")
    if not isinstance(sentence, str):
        raise DataError(f"{where}: sentence {sentence!r} is a {type(sentence).__name__}, not a string")
    return image, ann, list(box), sentence, ""


def _list_of(value, what: str, where: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"{where}: {what} is a {type(value).__name__} ({str(value)[:40]!r}), expected a list")
    return value


def _ref_records(refs_by_split: dict, boxes: dict, where: str) -> dict:
    """{split: [5-tuples]} from {split: [(sort key, ann_id, image_id, [sentences])]} (already in pickle order)."""
    out = {}
    for split, refs in refs_by_split.items():
        rows = []
        for _, ann_id, image_id, sentences in sorted(refs, key=lambda r: r[0]):
            ref = f"{where}: {split} ref of ann_id {ann_id!r}"
            if ann_id not in boxes:
                raise DataError(f"{where}: a {split} ref refers to ann_id {ann_id}, which the annotations do not "
                                "have; the refs and the annotation file do not belong together")
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise DataError(f"{ref}: image_id {image_id!r} is not an integer COCO image id")
            for k, sent in enumerate(_list_of(sentences, "its sentences", ref)):
                rows.append(_row(COCO_NAME.format(image_id), f"{ann_id}.pth", boxes[ann_id], sent,
                                 f"{ref}, sentence {k}"))
        out[split] = rows
    return out


def _field(ref: dict, key: str, path: Path):
    try:
        return ref[key]
    except KeyError:
        raise DataError(f"REFER refs file {path}: a ref has no '{key}' (keys: {', '.join(sorted(ref))})") from None


def from_refer(refer_root, name: str, log=print) -> dict:
    if name == "referit":
        raise DataError(f"--from refer cannot build referit: {REFERIT_REFUSAL}")
    if name not in REFER_SOURCES:
        raise DataError(f"--from refer builds {', '.join(REFER_SOURCES)}; not {name!r}")
    dataset, split_by = REFER_SOURCES[name]
    folder = Path(refer_root) / dataset
    refs_path = folder / f"refs({split_by}).p"
    if not refs_path.is_file() and folder.is_dir():
        have = sorted(p.name for p in folder.glob("refs(*).p"))
        raise DataError(f"{name} needs {refs_path} (REFER {dataset} split by {split_by}); {folder} has "
                        f"{', '.join(have) or 'no refs file'}")
    refs = load_refs(refs_path, log)
    instances = load_json(folder / "instances.json", "REFER annotation file")
    try:
        boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    except (KeyError, TypeError):
        raise DataError(f"{folder / 'instances.json'} has no COCO 'annotations' list with id and bbox") from None
    by_split = {s: [] for s in get_spec(name).distinct_splits}
    for ref in refs:
        split = _field(ref, "split", refs_path)
        if split in by_split:  # exact match, as the builder (REFER's getRefIds would also take 'testAB' for testA)
            listed = _list_of(_field(ref, "sentences", refs_path), "a ref's 'sentences'",
                              f"REFER refs file {refs_path}")
            if not all(isinstance(s, dict) for s in listed):
                raise DataError(f"REFER refs file {refs_path}: a ref's sentences are {listed[:2]!r}..., expected "
                                "dicts with 'sent'")
            sentences = [_field(s, "sent", refs_path) for s in listed]
            by_split[split].append((_field(ref, "file_name", refs_path), _field(ref, "ann_id", refs_path),
                                    _field(ref, "image_id", refs_path), sentences))
    return _ref_records(by_split, boxes, str(refs_path))


def mdetr_file(mdetr_root, dataset: str, split: str) -> Path:
    root = Path(mdetr_root)
    candidates = [root / f"{prefix}_{dataset}_{split}.json" for prefix in ("finetune", "final")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DataError(f"MDETR annotation file for {dataset} {split} not found: expected {candidates[0]} (or "
                        f"{candidates[1].name}) from MDETR's mdetr_annotations archive")
    return found


def from_mdetr(mdetr_root, name: str, log=print) -> dict:
    if name not in MDETR_SOURCES:
        why = REFERIT_REFUSAL if name == "referit" else "MDETR's refcocog annotations are the umd split"
        raise DataError(f"--from mdetr builds {', '.join(MDETR_SOURCES)}; not {name!r} ({why})")
    dataset = MDETR_SOURCES[name]
    by_split, boxes = {}, {}
    for split in get_spec(name).distinct_splits:
        path = mdetr_file(mdetr_root, dataset, split)
        data = load_json(path, "MDETR annotation file")
        try:
            anns = {}
            for a in data["annotations"]:
                anns.setdefault(a["image_id"], []).append(a)
            refs = []  # consecutive expressions of one ann_id are one ref's sentences, in order
            for image in data["images"]:
                objects = anns.get(image["id"], [])
                if len(objects) != 1:
                    raise DataError(f"{path}: image entry {image['id']} has {len(objects)} annotations; MDETR's "
                                    "referring-expression files have exactly one per expression")
                ann_id, image_id = objects[0]["original_id"], image["original_id"]
                boxes[ann_id] = objects[0]["bbox"]
                if refs and refs[-1][1] == ann_id:
                    refs[-1][3].append(image["caption"])
                else:
                    refs.append((image_id, ann_id, image_id, [image["caption"]]))
        except (KeyError, TypeError) as err:
            raise DataError(f"{path} is not an MDETR referring-expression file (no {err} in its images or "
                            "annotations)") from None
        by_split[split] = refs
    return _ref_records(by_split, boxes, f"MDETR {dataset}")


# TransVG's referit builder (onestage_grounding f75e50a, L311-347) skips these three images
REFERIT_SKIPPED = ("19579.jpg", "17975.jpg", "19575.jpg")
REFERIT_SPLITS = ("train", "val", "trainval", "test")


def from_berkeley(root, name: str, log=print) -> dict:
    """ReferItGame from the Berkeley split files TransVG's referit index was built from (DMS's
    referit_splits.tar.bz2 = ronghanghu/text_objseg exp-referit/data): referit_query_<split>.json
    {"<image>_<k>": [queries]} and referit_bbox.json {"<image>_<k>": [x1, y1, x2, y2]} (int, inclusive max).
    Records (as the builder): (<image>.jpg, "<image>_<k>.pth", xyxy box, query, ""), in the query file's order,
    the three images the builder skips left out; referit keeps its own trainval file."""
    if name != "referit":
        raise DataError(f"--from berkeley builds referit only (the Berkeley ReferItGame split files), not {name!r}")
    root = Path(root)
    boxes = load_json(root / "referit_bbox.json", "ReferItGame box file")
    out = {}
    for split in REFERIT_SPLITS:
        path = root / f"referit_query_{split}.json"
        queries = load_json(path, "ReferItGame query file")
        if not isinstance(queries, dict) or not isinstance(boxes, dict):
            raise DataError(f"{path} and referit_bbox.json must map '<image>_<k>' to queries / a box")
        rows = []
        for key, texts in queries.items():
            image = key.split("_", 1)[0] + ".jpg"
            if image in REFERIT_SKIPPED:
                continue
            if key not in boxes:
                raise DataError(f"{path}: {key} has no box in referit_bbox.json; the files do not belong together")
            where = f"{path}: {key}"
            rows += [_row(image, f"{key}.pth", boxes[key], text, f"{where} query {k}")
                     for k, text in enumerate(_list_of(texts, "its queries", where))]
        out[split] = rows
    return out


def write_index(records: dict, out, name: str, force: bool = False) -> Path:
    """DATA/data/<name>/<name>_<split>.pth for every split, written into a temporary folder and renamed into place."""
    target = Path(out) / "data" / name
    if target.exists() and not force:
        raise DataError(f"{target} exists: pass --force to replace it")
    with building(target) as tmp:
        for split, rows in records.items():
            save_torch(rows, tmp / f"{name}_{split}.pth")
    return target


def missing_images(records: dict, image_dir: Path) -> int:
    """How many distinct image files the records name that image_dir lacks."""
    names = {row[0] for rows in records.values() for row in rows}
    return sum(1 for n in names if not (image_dir / n).is_file())


def prepare(source: str, root, name: str, out, images=None, force: bool = False, log=print) -> dict:
    """Build and write the index; returns {split: records written}. `images`: the folder of the dataset's images
    (default: OUT/ln_data/<the dataset's image folder>); where it exists, missing files are counted."""
    build = {"refer": from_refer, "mdetr": from_mdetr, "berkeley": from_berkeley}.get(source)
    if build is None:
        raise DataError(f"unknown annotation source {source!r}: use refer, mdetr or berkeley")
    get_spec(name)
    if root is None or not Path(root).is_dir():
        raise DataError(f"--{source}-root {root} is not a folder")
    records = build(root, name, log)
    empty = [split for split, rows in records.items() if not rows]
    if empty:  # e.g. split names in the files that match none of the dataset's
        raise DataError(f"{name}: no record for split(s) {', '.join(empty)} in {root}: the annotation files name "
                        f"none of those splits ({', '.join(get_spec(name).distinct_splits)} expected); nothing written")
    blank = sum(not row[3].strip() for rows in records.values() for row in rows)
    if blank:  # TransVG's builder keeps them; `harness data check` lists them
        log(f"warning: {blank} records with an empty expression, kept as the builder keeps them")
    target = write_index(records, out, name, force)
    image_dir = Path(images) if images else Path(out) / "ln_data" / get_spec(name).image_dir
    if image_dir.is_dir():
        missing = missing_images(records, image_dir)
        if missing:
            log(f"warning: {missing} of the images the index refers to are not in {image_dir}")
    else:
        log(f"note: no image folder {image_dir} yet; put the dataset's images there (README, 'Real data')")
    log(f"wrote {target}: " + ", ".join(f"{s} {len(r):,}" for s, r in records.items()) + " expressions")
    return {s: len(r) for s, r in records.items()}
