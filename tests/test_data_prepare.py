"""`harness data prepare`: REFER's and MDETR's raw annotations -> TransVG's index, record by record.

The fixtures are written here in the exact raw formats: a refs(*.p) as Python 2's cPickle writes it (protocol 2,
`str` values as byte strings: SHORT_BINSTRING / BINSTRING opcodes with UTF-8 bytes), REFER's instances.json
(COCO layout), and MDETR's finetune_<dataset>_<split>.json as its refexp_coco_format.py writes them (one image
entry per expression, its one annotation, original_id = COCO image id / REFER ann_id)."""
import io
import json
import pickle
import struct

import pytest
import torch
from PIL import Image

from datasets.catalog import resolve_paths
from datasets.check import check_dataset, format_report
from datasets.errors import DataError
from datasets.index import load_split
from datasets.prepare import REFERIT_SPLITS, prepare
from harness.cli import main

COCO_DIR = "ln_data/other/images/mscoco/images/train2014"


class Py2Pickler(pickle._Pickler):
    """Python 2's cPickle at protocol 2: a `str` is a byte string (its UTF-8 bytes), not BINUNICODE."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# image id -> (width, height); refs in "pickle order": not sorted by file name across images, an image's refs
# in their file-name order (suffixes < 10, so text order = numeric order)
IMAGES = {581857: (64, 48), 9: (50, 40), 1200: (60, 60), 77: (40, 40)}
REFS = [  # (ref_id, ann_id, image_id, suffix, split, sentences)
    (0, 1719310, 581857, 1, "train", ["the lady with the blue shirt", "lady in blue"]),
    (1, 1719311, 581857, 2, "train", ["man on the left"]),
    (2, 5, 9, 0, "train", ["small café sign", "the sign"]),
    (3, 6, 9, 1, "val", ["big dog"]),
    (4, 7, 1200, 0, "testA", ["woman far right", "rightmost woman", "woman"]),
    (5, 8, 1200, 3, "testB", ["cup"]),
    (6, 9, 77, 0, "val", ["the tree"]),
    (7, 10, 77, 1, "testB", ["a naïve bird"]),
]
BOXES = {1719310: [3.7, 4.2, 20.9, 30.5], 1719311: [30.0, 2.0, 10.5, 12.0], 5: [1.0, 1.0, 10.0, 10.0],
         6: [20.2, 5.0, 25.0, 30.0], 7: [40.0, 10.0, 15.0, 40.0], 8: [0.0, 0.0, 5.5, 5.5], 9: [2.0, 3.0, 30.0, 30.0],
         10: [10.0, 10.0, 8.0, 8.0]}


def refer_refs(refs=REFS):
    sent_id = iter(range(1000))
    return [{"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
             "file_name": f"COCO_train2014_{image_id:012d}_{suffix}.jpg",
             "sentences": [{"tokens": s.split(), "raw": s.upper(), "sent_id": next(sent_id), "sent": s} for s in sents],
             "sent_ids": []} for ref_id, ann_id, image_id, suffix, split, sents in refs]


def instances(boxes=BOXES):
    return {"images": [{"id": i, "width": w, "height": h, "file_name": f"COCO_train2014_{i:012d}.jpg"}
                       for i, (w, h) in IMAGES.items()],
            "annotations": [{"id": ann_id, "image_id": next(r[2] for r in REFS if r[1] == ann_id), "bbox": box,
                             "category_id": 1, "area": box[2] * box[3], "iscrowd": 0, "segmentation": [[]]}
                            for ann_id, box in boxes.items()],
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


def write_refer(root, dataset="refcoco", split_by="unc", refs=None, boxes=BOXES):
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"refs({split_by}).p").write_bytes(py2_pickle(refer_refs(refs or REFS)))
    (folder / "instances.json").write_text(json.dumps(instances(boxes)))
    return root


def write_mdetr(root, dataset="refcoco", splits=("train", "val", "testA", "testB")):
    """As MDETR's refexp_coco_format.py: refs in pickle order filtered by split, one image entry per sentence."""
    root.mkdir(parents=True, exist_ok=True)
    next_id = iter(range(1, 1000))
    for split in splits:
        images, annotations = [], []
        for ref in refer_refs():
            if ref["split"] != split:
                continue
            for s in ref["sentences"]:
                i = next(next_id)
                w, h = IMAGES[ref["image_id"]]
                images.append({"file_name": f"COCO_train2014_{ref['image_id']:012d}.jpg", "height": h, "width": w,
                               "id": i, "original_id": ref["image_id"], "caption": s["sent"],
                               "dataset_name": dataset, "tokens_negative": []})
                box = BOXES[ref["ann_id"]]
                annotations.append({"area": box[2] * box[3], "iscrowd": 0, "image_id": i, "category_id": 1,
                                    "id": i, "bbox": box, "original_id": ref["ann_id"], "tokens_positive": []})
        (root / f"finetune_{dataset}_{split}.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": []}))
    return root


def write_images(data_root):
    folder = data_root / COCO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, (w, h) in IMAGES.items():
        Image.new("RGB", (w, h), (image_id % 255, 80, 120)).save(folder / f"COCO_train2014_{image_id:012d}.jpg")


def test_the_fixture_is_a_python2_pickle():
    """What the real files are like: a default pickle.load fails on the first non-ASCII byte string."""
    blob = py2_pickle(refer_refs())
    assert blob[:2] == b"\x80\x02" and pickle.SHORT_BINSTRING + bytes([len("sent")]) + b"sent" in blob
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)


def expected_index():
    """By hand: refs sorted by file_name, one record per sentence, COCO name, '<ann_id>.pth', xywh box, sentence."""
    def rows(*ref_ids):
        out = []
        for ref_id in ref_ids:
            _, ann_id, image_id, _, _, sents = REFS[ref_id]
            out += [(f"COCO_train2014_{image_id:012d}.jpg", f"{ann_id}.pth", BOXES[ann_id], s, "") for s in sents]
        return out
    # file names: ...000000000009_0 < ...000000000077_* < ...000000001200_* < ...000000581857_*
    return {"train": rows(2, 0, 1), "val": rows(3, 6), "testA": rows(4), "testB": rows(7, 5)}


def test_refer_to_index_record_by_record(tmp_path):
    refer = write_refer(tmp_path / "refer")
    counts = prepare("refer", refer, "unc", tmp_path / "data", log=lambda m: None)
    assert counts == {"train": 5, "val": 2, "testA": 3, "testB": 2}
    for split, rows in expected_index().items():
        assert torch.load(tmp_path / "data" / "data" / "unc" / f"unc_{split}.pth", weights_only=True) == rows
    assert sorted(p.name for p in (tmp_path / "data" / "data").iterdir()) == ["unc"]  # no temporary folder left
    assert not (tmp_path / "data" / "data" / "unc" / "unc_trainval.pth").exists()  # loader joins train + val


def test_prepared_index_loads_checks_and_trains(tmp_path, capsys):
    data = tmp_path / "data"
    write_images(data)
    assert main(["data", "prepare", "--from", "refer", "--refer-root", str(write_refer(tmp_path / "refer")),
                 "--dataset", "unc", "--out", str(data)]) == 0
    assert "warning" not in capsys.readouterr().out  # every referenced image is there
    records = load_split(resolve_paths(data), "unc", "testA")
    assert [r.phrase for r in records] == ["woman far right", "rightmost woman", "woman"]
    assert records[0].box == (40.0, 10.0, 55.0, 50.0)  # xywh truncated to int, then xyxy (TransVG's pull_item)
    report = check_dataset(data, "unc")
    assert [(c.split, c.records, c.refs, c.images) for c in report.splits] == \
        [("train", 5, 3, 2), ("val", 2, 2, 2), ("testA", 3, 1, 1), ("testB", 2, 2, 2)]
    text = format_report(report)
    assert "warning: unc train has 5 expressions, the published size is 120,624" in text  # a warning, not an error
    assert main(["data", "check", "--root", str(data), "--dataset", "unc"]) == 0
    vocab = tmp_path / "vocab.txt"
    words = sorted({w for *_, sents in REFS for s in sents for w in s.split()})
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    assert main(["run", "--method", "m2ist", "--dataset", "unc", "--data-root", str(data), "--tokenizer", str(vocab),
                 "--max-steps", "2", "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--num-workers", "0",
                 "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "work")]) == 0
    record = json.loads((tmp_path / "rec" / "unc_m2ist_tiny.json").read_text())
    assert record["data"] == "real" and record["train"]["step"] == 2


def test_refer_and_mdetr_give_identical_indexes(tmp_path):
    prepare("refer", write_refer(tmp_path / "refer"), "unc", tmp_path / "a", log=lambda m: None)
    prepare("mdetr", write_mdetr(tmp_path / "mdetr"), "unc", tmp_path / "b", log=lambda m: None)
    for split in ("train", "val", "testA", "testB"):
        a, b = (torch.load(tmp_path / d / "data" / "unc" / f"unc_{split}.pth", weights_only=True) for d in "ab")
        assert a == b and a


def test_refcocog_splits_and_a_missing_split_by(tmp_path):
    refs = [r[:4] + ({"testA": "test", "testB": "test"}.get(r[4], r[4]),) + r[5:] for r in REFS]
    refer = write_refer(tmp_path / "refer", "refcocog", "umd", refs=refs)
    assert prepare("refer", refer, "gref_umd", tmp_path / "data", log=lambda m: None) == {"train": 5, "val": 2, "test": 5}
    with pytest.raises(DataError, match=r"gref needs .*refcocog/refs\(google\).p .*has refs\(umd\).p"):
        prepare("refer", refer, "gref", tmp_path / "data", log=lambda m: None)


@pytest.mark.parametrize("source, name, message", [
    ("refer", "referit", "cannot build referit: TransVG's referit index comes from the Berkeley"),
    ("mdetr", "gref", "MDETR's refcocog annotations are the umd split"),
    ("refer", "flickr", "--from refer builds unc, unc\\+, gref, gref_umd"),
])
def test_unsupported_pairs_are_refused(tmp_path, source, name, message):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match=message):
        prepare(source, tmp_path / "src", name, tmp_path / "data", log=lambda m: None)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    refer = write_refer(tmp_path / "refer", boxes={k: v for k, v in BOXES.items() if k != 8})
    argv = ["data", "prepare", "--from", "refer", "--refer-root", str(refer), "--dataset", "unc", "--out", str(data)]
    cases = []
    assert main(argv) == 2  # a ref whose ann_id instances.json lacks
    cases.append(capsys.readouterr().err)
    (refer / "refcoco" / "refs(unc).p").write_bytes(b"\x80\x02garbage")
    assert main(argv) == 2
    cases.append(capsys.readouterr().err)
    (refer / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"x": Image.Image}], protocol=2))  # a class in it
    assert main(argv) == 2
    cases.append(capsys.readouterr().err)
    (refer / "refcoco" / "refs(unc).p").unlink()
    assert main(argv) == 2
    cases.append(capsys.readouterr().err)
    write_refer(refer)
    (refer / "refcoco" / "instances.json").write_text("{not json")
    assert main(argv) == 2
    cases.append(capsys.readouterr().err)
    (tmp_path / "mdetr").mkdir()
    assert main(["data", "prepare", "--from", "mdetr", "--mdetr-root", str(tmp_path / "mdetr"), "--dataset", "unc",
                 "--out", str(data)]) == 2
    cases.append(capsys.readouterr().err)
    expected = ["refers to ann_id 8, which the annotations do not have", "is corrupt or not a refs pickle",
                "is corrupt or not a refs pickle (UnpicklingError: refers to PIL.Image.Image",
                "refs(unc).p (REFER refcoco split by unc); ", "instances.json is not valid JSON",
                "finetune_refcoco_train.json"]
    for err, want in zip(cases, expected):
        assert err.startswith("error: ") and err.count("\n") == 1 and want in err, err
    assert not data.exists() or not any((data / "data").iterdir())  # nothing half-written


def test_missing_images_are_a_warning_with_the_count(tmp_path, capsys):
    data = tmp_path / "data"
    write_images(data)
    (data / COCO_DIR / "COCO_train2014_000000000077.jpg").unlink()
    messages = []
    prepare("refer", write_refer(tmp_path / "refer"), "unc", data, log=messages.append)
    assert any(m.startswith("warning: 1 of the images the index refers to are not in") for m in messages)
    with pytest.raises(DataError, match="exists: pass --force"):
        prepare("refer", tmp_path / "refer", "unc", data, log=messages.append)
    prepare("refer", tmp_path / "refer", "unc", data, force=True, log=messages.append)
    assert sorted(p.name for p in (data / "data").iterdir()) == ["unc"]


def test_referit_from_the_berkeley_split_files(tmp_path, capsys):
    """TransVG's referit builder: query-file order, '<image>_<k>.pth', int xyxy boxes, the 3 skipped images,
    its own trainval file; REFER's refclef is refused and points here."""
    src = tmp_path / "berkeley"
    src.mkdir()
    queries = {"train": {"30993_2": ["tallest bldng", "tall building"], "19579_1": ["skipped image"],
                         "8_1": ["sky"]},
               "val": {"12_3": ["left tree"]}, "test": {"40_1": ["water"], "40_2": ["boat on the right"]}}
    queries["trainval"] = {**queries["train"], **queries["val"]}
    boxes = {"30993_2": [106, 84, 168, 175], "19579_1": [0, 0, 5, 5], "8_1": [0, 0, 49, 20], "12_3": [3, 4, 20, 30],
             "40_1": [0, 30, 49, 49], "40_2": [30, 10, 45, 25]}
    for split, q in queries.items():
        (src / f"referit_query_{split}.json").write_text(json.dumps(q))
    (src / "referit_bbox.json").write_text(json.dumps(boxes))
    data = tmp_path / "data"
    images = data / "ln_data" / "referit" / "images"
    images.mkdir(parents=True)
    for name in ("30993", "8", "12", "40"):
        Image.new("RGB", (200, 200) if name == "30993" else (50, 50)).save(images / f"{name}.jpg")
    assert main(["data", "prepare", "--from", "berkeley", "--berkeley-root", str(src), "--dataset", "referit",
                 "--out", str(data)]) == 0
    assert "warning" not in capsys.readouterr().out
    train = torch.load(data / "data" / "referit" / "referit_train.pth", weights_only=True)
    assert train == [("30993.jpg", "30993_2.pth", [106, 84, 168, 175], "tallest bldng", ""),
                     ("30993.jpg", "30993_2.pth", [106, 84, 168, 175], "tall building", ""),
                     ("8.jpg", "8_1.pth", [0, 0, 49, 20], "sky", "")]
    assert len(torch.load(data / "data" / "referit" / "referit_trainval.pth", weights_only=True)) == 4
    assert load_split(resolve_paths(data), "referit", "test")[1].box == (30.0, 10.0, 45.0, 25.0)  # xyxy kept
    report = check_dataset(data, "referit")
    assert [(c.split, c.records) for c in report.splits] == [("train", 3), ("val", 1), ("test", 2)]
    assert "published size is 54,127" in format_report(report)
    with pytest.raises(DataError, match="use --from berkeley"):
        prepare("refer", src, "referit", tmp_path / "other", log=lambda m: None)


def _refs_with(change):
    refs = refer_refs()
    change(refs)
    return refs


@pytest.mark.parametrize("source, damage, message", [
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: [x.update(split="training") for x in r])),
     "no record for split(s) train, val, testA, testB"),
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: r[0].update(sentences="lady in blue"))),
     "a ref's 'sentences' is a str ('lady in blue'), expected a list"),
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: r[0].update(sentences=["lady in blue"]))),
     "expected dicts with 'sent'"),
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: r[0].update(image_id="581857"))),
     "image_id '581857' is not an integer COCO image id"),
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: r[0]["sentences"][0].update(sent={"a": 1}))),
     "sentence {'a': 1} is a dict, not a string"),
    ("refer", lambda root: _write_refs(root, _refs_with(lambda r: r[0]["sentences"][0].update(sent=3))),
     "sentence 3 is a int, not a string"),
    ("berkeley", lambda root: _write_berkeley(root, queries="sky"), "its queries is a str ('sky'), expected a list"),
    ("berkeley", lambda root: _write_berkeley(root, box="1,2,3,4"), "box '1,2,3,4' is not 4 finite numbers"),
    ("berkeley", lambda root: _write_berkeley(root, box=5), "box 5 is not 4 finite numbers"),
])
def test_broken_annotations_are_refused_record_by_record(tmp_path, capsys, source, damage, message):
    root = tmp_path / source
    if source == "refer":
        write_refer(root)
    damage(root)
    name = "unc" if source == "refer" else "referit"
    assert main(["data", "prepare", "--from", source, f"--{source}-root", str(root), "--dataset", name,
                 "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "data" / "data" / name).exists()  # nothing written


def test_an_empty_sentence_is_kept_with_a_warning(tmp_path):
    root = write_refer(tmp_path / "refer")
    _write_refs(root, _refs_with(lambda r: r[0]["sentences"][0].update(sent="")))
    messages = []
    counts = prepare("refer", root, "unc", tmp_path / "data", log=messages.append)
    assert counts["train"] == 5 and any("1 records with an empty expression, kept" in m for m in messages)


def _write_refs(root, refs):
    (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(refs))


def _write_berkeley(root, queries=None, box=None):
    root.mkdir(parents=True, exist_ok=True)
    for split in REFERIT_SPLITS:
        (root / f"referit_query_{split}.json").write_text(json.dumps({"8_1": queries or ["sky"]}))
    (root / "referit_bbox.json").write_text(json.dumps({"8_1": box if box is not None else [0, 0, 49, 20]}))
