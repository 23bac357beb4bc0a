"""RECDataset items and batches, `check_dataset`, and the `harness data` commands end to end."""
import random
import shutil

import pytest
import torch
from PIL import Image

from datasets.catalog import resolve_paths
from datasets.check import check_dataset, format_report
from datasets.errors import DataError
from datasets.index import load_split
from datasets.rec import RECDataset, collate
from datasets.tokenize import build_tokenizer, encode
from datasets.transforms import box_to_pixels
from harness.cli import main


@pytest.fixture(scope="module")
def tokenizer(synth_root):
    return build_tokenizer(synth_root / "vocab.txt")


@pytest.fixture
def copy_root(synth_root, tmp_path):
    """A private copy for tests that damage data."""
    return shutil.copytree(synth_root, tmp_path / "copy")


def test_eval_item(synth_root, tokenizer):
    paths = resolve_paths(synth_root)
    ds = RECDataset(paths, "unc", "val", tokenizer, image_size=128, train=False)
    record = load_split(paths, "unc", "val")[3]
    item = ds[3]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.uint8  # normalised on the batch
    assert item["image_mask"].shape == (128, 128) and item["image_mask"].dtype == torch.bool
    assert item["image_mask"].any() and not item["image_mask"].all()
    assert item["index"] == 3
    ids, mask = encode(tokenizer, record.phrase, 20)
    assert torch.equal(item["word_ids"], ids) and torch.equal(item["word_mask"], mask)
    width, height = Image.open(paths.image_dir("unc") / record.image_file).size
    assert (box_to_pixels(item["box"], width, height, 128) - torch.tensor(record.box)).abs().max() < 1e-3


def test_splits_list_query_len_and_collate(synth_root, tokenizer):
    paths = resolve_paths(synth_root)
    ds = RECDataset(paths, "gref", ["train", "val"], tokenizer, image_size=96, train=True)
    assert len(ds) == len(load_split(paths, "gref", "train")) + len(load_split(paths, "gref", "val"))
    random.seed(0)
    torch.manual_seed(0)
    batch = collate([ds[i] for i in (0, 5, 9)])
    assert batch["image"].shape == (3, 3, 96, 96) and batch["image_mask"].shape == (3, 96, 96)
    assert batch["word_ids"].shape == (3, 40) and batch["word_mask"].dtype == torch.long
    assert batch["box"].shape == (3, 4) and ((batch["box"] >= 0) & (batch["box"] <= 1)).all()
    assert batch["index"].tolist() == [0, 5, 9]


def test_missing_image_names_image_index_file_and_record(copy_root, tokenizer):
    paths = resolve_paths(copy_root)
    records = load_split(paths, "referit", "test")
    (paths.image_dir("referit") / records[4].image_file).unlink()
    ds = RECDataset(paths, "referit", "test", tokenizer, image_size=64, train=False)
    row = next(i for i, r in enumerate(records) if r.image_file == records[4].image_file)
    with pytest.raises(DataError) as err:
        ds[row]
    assert str(err.value).startswith(f"image {paths.image_dir('referit') / records[4].image_file} not found, "
                                      f"needed by index file {records[4].source} record {row}")


def test_check_counts_match_the_index(synth_root):
    report = check_dataset(synth_root, "unc")
    paths = resolve_paths(synth_root)
    expected = {s: load_split(paths, "unc", s) for s in ("train", "val", "testA", "testB")}
    assert [(c.split, c.records, c.images) for c in report.splits] == \
        [(s, len(r), len({x.image_file for x in r})) for s, r in expected.items()]
    assert report.images == 30
    text = format_report(report)
    assert text.startswith("unc (RefCOCO)") and f"testB  {len(expected['testB']):>7} expressions" in text
    assert report.synthetic and "synthetic set" in text and "warning" not in text  # no RefCOCO sizes apply


def test_check_finds_a_box_outside_its_image(copy_root):
    path = copy_root / "data/gref_umd/gref_umd_val.pth"
    rows = torch.load(path, weights_only=True)
    file, ann, (x, y, w, h), sentence, attri = rows[2]
    rows[2] = (file, ann, [x, y, w + 500, h], sentence, attri)
    torch.save(rows, path)
    with pytest.raises(DataError, match=r"gref_umd_val.pth record 2: box .* is not inside the"):
        check_dataset(copy_root, "gref_umd")


def test_odd_records_are_kept_as_transvg_keeps_them_and_listed_by_check(copy_root, tokenizer, capsys):
    """An empty expression and a box without area (after TransVG's int truncation) load, train and score as in
    TransVG (same n); loading warns once per file and `harness data check` lists each one."""
    from harness.losses import rec_loss

    paths = resolve_paths(copy_root)
    before = {s: len(load_split(paths, "unc", s)) for s in ("train", "testA")}
    capsys.readouterr()
    for split, row, change in (("testA", 1, lambda r: r[:3] + ("  ", r[4])),
                               ("train", 2, lambda r: r[:2] + ([r[2][0], r[2][1], 0.7, r[2][3]],) + r[3:])):
        path = copy_root / f"data/unc/unc_{split}.pth"
        rows = torch.load(path, weights_only=True)
        rows[row] = change(rows[row])
        torch.save(rows, path)
    assert {s: len(load_split(paths, "unc", s)) for s in ("train", "testA")} == before
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") and "holds 1 of" in line for line in err)
    train = RECDataset(paths, "unc", "train", tokenizer, image_size=64, train=True)
    box = train[2]["box"]
    assert box[2] == 0  # no width, as in TransVG
    assert torch.isfinite(rec_loss(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), box[None])["loss"])

    assert main(["data", "check", "--root", str(copy_root), "--dataset", "unc"]) == 0
    out = capsys.readouterr().out
    assert "2 odd (kept, as TransVG keeps them)" in out
    assert "odd: index file " in out and "unc_testA.pth record 1: empty referring expression" in out
    assert "unc_train.pth record 2: box " in out and "has no area" in out


def test_check_finds_an_unreadable_image(copy_root):
    (copy_root / "ln_data/referit/images" / load_split(resolve_paths(copy_root), "referit", "train")[0].image_file) \
        .write_bytes(b"no jpeg")
    with pytest.raises(DataError, match=r"referit_train.pth record 0: image .* unreadable"):
        check_dataset(copy_root, "referit")


EXPECTED_SPLITS = {"unc": ["train", "val", "testA", "testB"], "unc+": ["train", "val", "testA", "testB"],
                   "gref": ["train", "val"], "gref_umd": ["train", "val", "test"], "referit": ["train", "val", "test"]}


def test_cli_synth_then_check(tmp_path, capsys):
    root = tmp_path / "d"
    assert main(["data", "synth", "--root", str(root), "--images", "8"]) == 0
    summary = capsys.readouterr().out
    assert "seed 13, 8 images per name" in summary
    for name, splits in EXPECTED_SPLITS.items():
        assert main(["data", "check", "--root", str(root), "--dataset", name]) == 0
        out = capsys.readouterr().out
        counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()[1:]
                  if line.split()[0] in splits}
        assert list(counts) == splits and min(counts.values()) > 0
        records = {s: len(load_split(resolve_paths(root), name, s)) for s in splits}
        assert counts == records
        assert f"{name:<9} " + "  ".join(f"{s} {n}" for s, n in records.items()) in summary


@pytest.mark.parametrize("argv, message", [
    (["data", "check", "--root", "{tmp}/missing", "--dataset", "unc"], "error: data root {tmp}/missing does not exist"),
    (["data", "check", "--root", "{root}", "--dataset", "refcoco"], "error: unknown dataset 'refcoco'"),
    (["data", "check", "--root", "{root}", "--dataset", "flickr"],
     "error: index file {root}/data/flickr/flickr_train.pth not found"),
    (["data", "synth", "--root", "{tmp}/small", "--images", "2"], "error: 2 synthetic images per name is out of range: use 5 to 99999"),
])
def test_cli_errors_are_one_line_exit_2(synth_root, tmp_path, capsys, argv, message):
    fill = {"tmp": str(tmp_path), "root": str(synth_root)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(**fill)) and err.count("\n") == 1 and "Traceback" not in err
