"""Index files in TransVG's exact tuple formats -> records; every bad input -> one DataError line."""
import numpy as np
import pytest
import torch

from datasets.catalog import DATASETS, get_spec, resolve_paths
from datasets.errors import DataError
from datasets.index import Record, load_split

XYWH = [10.7, 20.2, 30.9, 40.5]  # int-truncated to [10, 20, 30, 40] -> xyxy [10, 20, 40, 60]


def write_index(root, name, split, rows):
    folder = root / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(rows, folder / f"{name}_{split}.pth")
    return folder / f"{name}_{split}.pth"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "ln_data").mkdir()
    return tmp_path


@pytest.mark.parametrize("name", ["unc", "unc+", "gref", "gref_umd"])
def test_coco_names_truncate_xywh_then_convert(root, name):
    write_index(root, name, "train", [
        ("COCO_train2014_000000000001.jpg", 7, XYWH, "The Red CIRCLE", []),
        ("COCO_train2014_000000000002.jpg", 8, [0, 0, 5, 5], "left one", []),
    ])
    records = load_split(resolve_paths(root), name, "train")
    assert records == [Record("COCO_train2014_000000000001.jpg", (10.0, 20.0, 40.0, 60.0), "the red circle"),
                       Record("COCO_train2014_000000000002.jpg", (0.0, 0.0, 5.0, 5.0), "left one")]
    assert records[1].row == 1 and records[1].source.endswith(f"{name}_train.pth")


def test_referit_and_flickr_boxes_are_xyxy_truncated(root):
    write_index(root, "referit", "test", [("5.jpg", "5_1.pth", [1.9, 2.5, 30.2, 40.8], "Sky", "")])
    write_index(root, "flickr", "val", [("36979.jpg", [3.3, 4.4, 50.5, 60.6], "A Dog")])
    paths = resolve_paths(root)
    assert load_split(paths, "referit", "test") == [Record("5.jpg", (1.0, 2.0, 30.0, 40.0), "sky")]
    assert load_split(paths, "flickr", "val") == [Record("36979.jpg", (3.0, 4.0, 50.0, 60.0), "a dog")]


def test_trainval_concatenates_except_referit(root):
    write_index(root, "unc", "train", [("a.jpg", 1, [0, 0, 1, 1], "a", [])])
    write_index(root, "unc", "val", [("b.jpg", 2, [0, 0, 2, 2], "b", []), ("c.jpg", 3, [0, 0, 3, 3], "c", [])])
    write_index(root, "referit", "train", [("1.jpg", 1, [0, 0, 1, 1], "train", "")])
    write_index(root, "referit", "val", [("2.jpg", 2, [0, 0, 1, 1], "val", "")])
    write_index(root, "referit", "trainval", [("9.jpg", 9, [0, 0, 9, 9], "own file", "")])
    paths = resolve_paths(root)
    assert [r.image_file for r in load_split(paths, "unc", "trainval")] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r.phrase for r in load_split(paths, "referit", "trainval")] == ["own file"]


def test_catalog_matches_transvg_registry():
    assert {n: s.splits for n, s in DATASETS.items()} == {
        "unc": ("train", "val", "trainval", "testA", "testB"),
        "unc+": ("train", "val", "trainval", "testA", "testB"),
        "gref": ("train", "val"),
        "gref_umd": ("train", "val", "test"),
        "referit": ("train", "val", "trainval", "test"),
        "flickr": ("train", "val", "test"),
    }
    assert [get_spec(n).max_query_len for n in DATASETS] == [20, 20, 40, 40, 20, 20]
    assert get_spec("flickr").tuple_len == 3 and get_spec("referit").bbox_format == "xyxy"


def test_image_dirs_override(root):
    paths = resolve_paths(root, image_dirs={"unc": "other/images/train2014"})
    assert paths.image_dir("unc") == root / "ln_data" / "other/images/train2014"
    assert paths.image_dir("gref") == root / "ln_data" / "other/images/mscoco/images/train2014"
    assert paths.image_dir("referit") == root / "ln_data" / "referit/images"


def test_numpy_boxes_load_safely_through_the_allow_list(root):
    """Index files with numpy boxes (and numpy scalars) need more than torch's default weights_only set; the
    allow-list admits them without the unsafe unpickler."""
    path = write_index(root, "unc", "val", [("a.jpg", np.int64(1), np.array(XYWH), "x", [])])
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    records = load_split(resolve_paths(root), "unc", "val")
    assert records[0].box == (10.0, 20.0, 40.0, 60.0)


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist.*harness data synth"):
        resolve_paths(tmp_path / "nowhere")


def test_missing_index_or_image_folder(tmp_path):
    (tmp_path / "ln_data").mkdir()
    with pytest.raises(DataError, match=r"index folder .*data does not exist.*GETTING_STARTED"):
        resolve_paths(tmp_path)
    (tmp_path / "ln_data").rmdir()
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"image folder .*ln_data does not exist"):
        resolve_paths(tmp_path)


def test_missing_split_file_names_the_expected_path(root):
    write_index(root, "gref_umd", "train", [("a.jpg", 1, [0, 0, 1, 1], "a", [])])
    expected = root / "data" / "gref_umd" / "gref_umd_test.pth"
    with pytest.raises(DataError) as err:
        load_split(resolve_paths(root), "gref_umd", "test")
    message = str(err.value)
    assert str(expected) in message and "GETTING_STARTED" in message and "harness data synth" in message
    assert "\n" not in message


def test_unknown_split_and_unknown_name(root):
    with pytest.raises(DataError, match=r"gref has no split 'trainval': its splits are train, val$"):
        load_split(resolve_paths(root), "gref", "trainval")
    with pytest.raises(DataError, match=r"unknown dataset 'refcoco': known names are unc, unc\+, gref, gref_umd, "
                                        r"referit, flickr"):
        get_spec("refcoco")


def test_corrupt_file(root):
    folder = root / "data" / "unc"
    folder.mkdir(parents=True)
    (folder / "unc_val.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match=r"unc_val.pth is corrupt or not a torch file"):
        load_split(resolve_paths(root), "unc", "val")


@pytest.mark.parametrize("rows, problem", [
    ({"a": 1}, r"unc_val.pth holds a dict, expected a list of \(img_file, _, bbox, phrase, _\) tuples"),
    ([("a.jpg", 1, [0, 0, 1, 1], "a", []), ("b.jpg", [0, 0, 1, 1], "b")], r"unc_val.pth record 1: expected a 5-tuple"),
    ([("a.jpg", 1, [0, 0, 1, 1], "a", [])] * 2 + [("c.jpg", 1, ["x", 0, 1, 1], "c", [])],
     r"unc_val.pth record 2: bbox must be 4 numbers"),
    ([("a.jpg", 1, [0, 0, 1], "a", [])], r"record 0: bbox must be 4 finite numbers"),
    ([("a.jpg", 1, [0, 0, 1, 1], None, [])], r"record 0: phrase must be a string"),
    ([("", 1, [0, 0, 1, 1], "a", [])], r"record 0: image file name must be a non-empty string"),
])
def test_bad_record_names_file_and_record(root, rows, problem):
    write_index(root, "unc", "val", rows)
    with pytest.raises(DataError, match=problem):
        load_split(resolve_paths(root), "unc", "val")


def test_flickr_needs_three_tuples(root):
    write_index(root, "flickr", "test", [("a.jpg", 1, [0, 0, 1, 1], "a", [])])
    with pytest.raises(DataError, match=r"flickr_test.pth record 0: expected a 3-tuple \(img_file, bbox, phrase\)"):
        load_split(resolve_paths(root), "flickr", "test")
