"""Text-blind baselines: each rule picks the box it should among the index's boxes on an image."""
import pytest
import torch
from PIL import Image

from datasets.baseline import text_blind_baselines
from datasets.catalog import get_spec, resolve_paths
from harness.cli import main

LARGE, CENTRE, CORNER = [0, 0, 60, 60], [45, 45, 10, 10], [80, 80, 10, 10]  # xywh on a 100 x 100 image


def make_unc(root, val_rows, other_rows):
    folder = root / "data" / "unc"
    folder.mkdir(parents=True)
    for split in ("train", "val", "testA", "testB"):
        torch.save(val_rows if split == "val" else other_rows, folder / f"unc_{split}.pth")
    images = root / "ln_data" / get_spec("unc").image_dir
    images.mkdir(parents=True)
    for name in {row[0] for row in val_rows + other_rows}:
        Image.new("RGB", (100, 100)).save(images / name)
    return resolve_paths(root)


def test_rules_pick_the_largest_the_most_central_and_a_random_box(tmp_path):
    val = [("a.jpg", 1, LARGE, "big one", []), ("a.jpg", 2, CENTRE, "middle one", []),
           ("a.jpg", 3, CENTRE, "the small one in the middle", []), ("a.jpg", 4, CORNER, "corner one", [])]
    paths = make_unc(tmp_path, val, [("b.jpg", 5, LARGE, "other image", [])])
    result = text_blind_baselines(paths, "unc")
    assert result["val"]["largest"] == pytest.approx(1 / 4)  # only the expression for LARGE
    assert result["val"]["central"] == pytest.approx(2 / 4)  # both expressions for CENTRE
    assert result["val"]["random"] == pytest.approx(1 / 3)  # three distinct boxes, one right each time
    assert result["val"]["n"] == 4 and result["val"]["candidates"] == 3
    assert result["testA"]["largest"] == result["testA"]["random"] == 1.0  # one box on b.jpg


def test_cli_prints_the_table_and_missing_data_is_one_line(tmp_path, capsys):
    make_unc(tmp_path / "ok", [("a.jpg", 1, LARGE, "big one", [])], [("b.jpg", 5, LARGE, "other", [])])
    assert main(["data", "baseline", "--dataset", "unc", "--root", str(tmp_path / "ok")]) == 0
    assert "| val" in capsys.readouterr().out
    assert main(["data", "baseline", "--dataset", "unc", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_baseline_records_become_the_floor_rows_of_the_main_table(tmp_path, capsys):
    """`--output` writes one record per rule; `harness table` shows them below the methods of the same data kind."""
    import json

    from harness.tables import main_tables, read_folder

    val = [("a.jpg", 1, LARGE, "big one", []), ("a.jpg", 2, CENTRE, "middle one", []),
           ("a.jpg", 3, CENTRE, "the small one in the middle", []), ("a.jpg", 4, CORNER, "corner one", [])]
    make_unc(tmp_path / "d", val, [("b.jpg", 5, LARGE, "other image", [])])
    out = tmp_path / "runs"
    assert main(["data", "baseline", "--dataset", "unc", "--root", str(tmp_path / "d"), "--output", str(out)]) == 0
    central = json.loads((out / "unc_textblind-central.json").read_text())
    assert central["kind"] == "baseline" and central["data"] == "real"
    assert central["results"]["val"]["accuracy"] == pytest.approx(2 / 4)
    assert central["results"]["val"]["miou"] == pytest.approx((100 / 3600 + 1 + 1 + 0) / 4)  # CENTRE each time
    run = dict(central, kind="run", run_id="unc_full_paper", method="full", preset="paper",
               params={"encoder_side_trainable": 1, "trainable": 2, "total": 3, "percent_encoder_side": 33.3})
    (out / "unc_full_paper.json").write_text(json.dumps(run))
    records = read_folder(out)
    ((_, table, _),) = main_tables([r for r in records if r["kind"] == "run"],
                                   [r for r in records if r["kind"] == "baseline"])
    assert list(table["method"]) == ["full", "text-blind: central", "text-blind: largest", "text-blind: random"]
    assert table.set_index("method").loc["text-blind: largest", "RefCOCO val"] == "25.00"
