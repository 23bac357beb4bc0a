"""What a new user's bad inputs met: each is one line before any work, and nothing is overwritten or mislabelled."""
import os
import stat

import pytest

from datasets.errors import DataError
from datasets.synth import write_synthetic
from harness.cli import main
from harness.errors import HarnessError
from harness.recipe import build_recipe
from harness.records import write_json_atomic
from harness.train import RunConfig, run
from methods import build_method


def test_synth_refuses_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "real"
    (mine / "data" / "unc").mkdir(parents=True)
    (mine / "data" / "unc" / "unc_train.pth").write_bytes(b"real index")
    with pytest.raises(DataError, match="not empty and holds no synthetic set"):
        write_synthetic(mine, images=5)
    assert (mine / "data" / "unc" / "unc_train.pth").read_bytes() == b"real index"
    write_synthetic(mine, images=5, force=True)
    assert (mine / "scenes.json").is_file() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    write_synthetic(mine, images=5)  # a synthetic set may be rewritten without --force


def test_a_synthetic_set_given_as_data_root_is_recorded_as_synthetic(synth_root, tmp_path):
    record = run(RunConfig(method="frozen", dataset="unc", data_root=str(synth_root), device="cpu",
                           output=str(tmp_path / "rec"), work_dir=str(tmp_path / "w"),
                           recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0}))
    assert record["data"] == "synthetic" and record["dataset_label"].startswith("synthetic")
    assert record["data_desc"] == {"seed": 13, "images": 30, "root": str(synth_root)}


@pytest.mark.parametrize("bad, message", [
    ({"lr": -1.0}, "lr must be > 0"), ({"lr_drop": 0}, "lr_drop must be >= 1"),
    ({"eval_every": 0}, "eval_every must be >= 1"), ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
])
def test_recipe_ranges_are_checked_before_work(bad, message):
    with pytest.raises(HarnessError, match=message):
        build_recipe("tiny", "unc", bad)


def test_unknown_adapter_activation_and_init_are_refused():
    for options, message in (({"activation": "swish"}, "activation must be one of"), ({"init": "xavier"}, "init must")):
        with pytest.raises(HarnessError, match=message):
            build_method("adapter", options)


@pytest.mark.parametrize("data, message", [
    ("data: {split_rot: x}\n", "unknown data option\\(s\\) split_rot"),
    ("data: {image_dirs: other/images}\n", "image_dirs must map a dataset name"),
    ("data: {split_root: /somewhere}\n", "split_root need --data-root"),
])
def test_data_section_is_checked(tmp_path, capsys, data, message):
    config = tmp_path / "c.yaml"
    config.write_text(data)
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err


def test_tag_cannot_leave_the_output_folder(capsys):
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--tag", "../../escape"]) == 2
    assert "--tag '../../escape'" in capsys.readouterr().err


def test_records_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
