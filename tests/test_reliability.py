"""What a new user's bad inputs met: each is one line before any work, and nothing is overwritten or mislabelled."""
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from datasets.errors import DataError
from datasets.synth import write_synthetic
from harness.cli import main
from harness.errors import HarnessError
from harness.recipe import build_recipe
from harness.records import portable, write_json_atomic
from harness.run import RunConfig, run
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
    (mine / "NOTES.txt").write_text("mine")
    (mine / "my_runs").mkdir()
    (mine / "data" / "mine").mkdir()
    write_synthetic(mine, images=6)  # a synthetic set may be rewritten without --force ...
    assert (mine / "NOTES.txt").read_text() == "mine" and (mine / "my_runs").is_dir() and (mine / "data" / "mine").is_dir()
    assert json.loads((mine / "scenes.json").read_text())["images_per_name"] == 6  # ... and its own files are new
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_synthetic_set_given_as_data_root_is_recorded_as_synthetic(synth_root, tmp_path):
    record = run(RunConfig(method="frozen", dataset="unc", data_root=str(synth_root), device="cpu",
                           output=str(tmp_path / "rec"), work_dir=str(tmp_path / "w"),
                           recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0}))
    assert record["data"] == "synthetic" and record["dataset_label"].startswith("synthetic")
    assert record["data_desc"] == {"seed": 13, "images": 30, "root": portable(synth_root)}


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


# ---- data the run would have trained on although `data check` rejects it; fail early, not after hours --------
@pytest.fixture
def data_copy(synth_root, tmp_path):
    import shutil

    return Path(shutil.copytree(synth_root, tmp_path / "copy"))


def run_args(root, tmp_path, *extra):
    return ["run", "--method", "frozen", "--dataset", "unc", "--data-root", str(root), "--device", "cpu",
            "--max-steps", "1", "--epochs", "1", "--batch-size", "4", "--output", str(tmp_path / "rec"),
            "--work-dir", str(tmp_path / "work"), *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("change, message", [
    (lambda row: row[:2] + ([5, 5, -9, 10],) + row[3:], "a negative coordinate or extent"),
    (lambda row: row[:2] + ([-5, 5, 9, 10],) + row[3:], "a negative coordinate or extent"),
    (lambda row: row[:2] + ([5, 5, float("nan"), 10],) + row[3:], "bbox must be 4 finite numbers"),
])
def test_bad_records_are_refused_as_they_load(data_copy, tmp_path, capsys, change, message):
    path = data_copy / "data/unc/unc_train.pth"
    rows = torch.load(path, weights_only=True)
    rows[3] = change(rows[3])
    torch.save(rows, path)
    assert main(run_args(data_copy, tmp_path)) == 2
    err = one_line_error(capsys)
    assert message in err and "unc_train.pth record 3" in err
    assert not (tmp_path / "rec").exists()


def test_an_empty_eval_split_is_an_error_for_run_and_check(data_copy, tmp_path, capsys):
    torch.save([], data_copy / "data/unc/unc_testB.pth")
    assert main(run_args(data_copy, tmp_path)) == 2
    assert "the testB split of unc is empty" in one_line_error(capsys)
    assert main(["data", "check", "--root", str(data_copy), "--dataset", "unc"]) == 2
    assert "holds no records" in one_line_error(capsys)


def test_missing_eval_images_and_unwritable_folders_stop_the_run_before_training(data_copy, synth_root, tmp_path,
                                                                                capsys):
    from datasets.catalog import resolve_paths
    from datasets.index import load_split

    paths = resolve_paths(data_copy)
    victim = load_split(paths, "unc", "testA")[0].image_file
    (paths.image_dir("unc") / victim).unlink()
    assert main(run_args(data_copy, tmp_path)) == 2
    assert victim in one_line_error(capsys)
    assert not (tmp_path / "work" / "unc_frozen_tiny" / "last.pth").exists()  # no epoch was trained
    (tmp_path / "blocker").write_text("a file where a folder should be")
    assert main(run_args(synth_root, tmp_path) + ["--output", str(tmp_path / "blocker" / "rec")]) == 2
    assert "cannot write to" in one_line_error(capsys)


def test_a_data_error_inside_a_loader_worker_is_one_line(data_copy, tmp_path, capsys):
    from datasets.catalog import resolve_paths
    from datasets.index import load_split

    paths = resolve_paths(data_copy)
    evals = {r.image_file for s in ("val", "testA", "testB") for r in load_split(paths, "unc", s)}
    victim = next(r.image_file for r in load_split(paths, "unc", "train") if r.image_file not in evals)
    (paths.image_dir("unc") / victim).write_bytes(b"not a jpeg")
    assert main(run_args(data_copy, tmp_path, "--num-workers", "1", "--batch-size", "32")) == 2
    assert "unreadable" in one_line_error(capsys)


# ---- files that used to give tracebacks --------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 4])
def test_empty_or_random_weight_files_are_one_line(tmp_path, capsys, content):
    weights = tmp_path / "detr.pth"
    weights.write_bytes(content)
    for argv in (["run", "--method", "frozen", "--dataset", "unc", "--vision-weights", str(weights)],
                 ["eval", "--checkpoint", str(weights), "--dataset", "unc"],
                 ["eval", "--checkpoint", str(tmp_path), "--dataset", "unc"]):
        assert main(argv) == 2
        one_line_error(capsys)


def test_bert_folders_without_config_or_missing_are_one_line(tmp_path, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"garbage")
    for source, message in ((tmp_path / "bert", "has no config.json"), (tmp_path / "nothere", "not found")):
        assert main(["run", "--method", "frozen", "--dataset", "unc", "--language-weights", str(source)]) == 2
        assert message in one_line_error(capsys)
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert", "hidden_size": 64}')
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--language-weights", str(tmp_path / "bert")]) == 2
    assert "cannot load BERT weights" in one_line_error(capsys)


def test_corrupt_last_checkpoint_and_tampered_eval_checkpoint(synth_root, tmp_path, capsys):
    args = run_args(synth_root, tmp_path)
    assert main(args) == 0
    capsys.readouterr()
    best = tmp_path / "work" / "unc_frozen_tiny" / "best.pth"
    ckpt = torch.load(best, weights_only=True)
    del ckpt["meta"]["model_config"]
    torch.save(ckpt, tmp_path / "tampered.pth")
    assert main(["eval", "--checkpoint", str(tmp_path / "tampered.pth"), "--dataset", "unc"]) == 2
    assert "model description is damaged" in one_line_error(capsys)
    (tmp_path / "work" / "unc_frozen_tiny" / "last.pth").write_bytes(b"\x00" * 10)
    for extra in ([], ["--resume", "--skip-done"]):
        (tmp_path / "rec" / "unc_frozen_tiny.json").unlink(missing_ok=True)
        assert main(args + extra) == 2
        assert "--restart" in one_line_error(capsys)
    assert main(args + ["--restart"]) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.pop("optimizer"), "KeyError: 'optimizer'"),
    (lambda c: c.update(state="x"), "its training state is malformed"),
    (lambda c: c["state"].update(epoch="1"), "its training state is malformed"),
    (lambda c: c["model"].update({k: torch.zeros(3) for k in list(c["model"])[:1]}), "RuntimeError: Error(s) in"),
])
def test_a_damaged_last_checkpoint_of_this_run_is_one_line(synth_root, tmp_path, capsys, damage, message):
    """A last.pth with this run's configuration hash whose inside is damaged: one line pointing at --restart."""
    args = run_args(synth_root, tmp_path)
    assert main(args) == 0
    last = tmp_path / "work" / "unc_frozen_tiny" / "last.pth"
    ckpt = torch.load(last, weights_only=False)
    damage(ckpt)
    torch.save(ckpt, last)
    capsys.readouterr()
    assert main(args) == 2  # the same run again resumes from last.pth
    err = one_line_error(capsys)
    assert f"{last} cannot be resumed" in err and message in err and "pass --restart" in err


def test_config_that_is_a_folder_or_not_text(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    for config, message in ((tmp_path, "is a folder"), (tmp_path / "bin.yaml", "is not UTF-8")):
        assert main(["run", "--method", "frozen", "--dataset", "unc", "--config", str(config)]) == 2
        assert message in one_line_error(capsys)


def test_a_record_with_a_non_numeric_accuracy_is_refused(tmp_path):
    from harness.records import read_record

    path = tmp_path / "r.json"
    write_json_atomic(path, {"schema": 1, "kind": "run", "run_id": "x", "method": "full", "method_config": {},
                             "dataset": "unc", "dataset_label": "RefCOCO", "data": "real", "preset": "tiny",
                             "recipe": {}, "weights": {}, "env": {}, "flops": {}, "memory": {}, "time": {},
                             "params": {"encoder_side_trainable": 1, "trainable": 2, "total": 3},
                             "results": {"val": {"accuracy": "high", "miou": 0.5, "n": 3}},
                             "status": "ok", "error": None, "created_at": "now", "config_hash": "h"})
    with pytest.raises(HarnessError, match="accuracy is 'high', not a number"):
        read_record(path)


# ---- profile --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--loader", "--batch-size", "5000", "--num-workers", "0", "--preset", "tiny"], "fewer than one batch"),
    (["--loader", "--batch-size", "0"], "--batch-size and --steps must be >= 1"),
    (["--method", "frozen", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--loader", "--batch-size", "4096", "--num-workers", "64"], "more than 80% of this machine"),
])
def test_profile_bad_sizes_are_one_line(monkeypatch, synth_root, capsys, extra, message):
    import harness.run as train_mod

    monkeypatch.setattr(train_mod, "synthetic_root", lambda *a, **k: synth_root)
    assert main(["profile", *extra]) == 2
    assert message in one_line_error(capsys)


def test_an_eval_box_outside_its_image_is_refused_before_training(data_copy, tmp_path, capsys):
    path = data_copy / "data/unc/unc_val.pth"
    rows = torch.load(path, weights_only=True)
    rows[0] = rows[0][:2] + ([0, 0, 5000, 10],) + rows[0][3:]
    torch.save(rows, path)
    assert main(run_args(data_copy, tmp_path)) == 2
    assert "unc_val.pth record 0: box" in one_line_error(capsys)


def test_a_write_failure_mid_run_is_one_line_and_leaves_a_failed_record(synth_root, tmp_path, capsys, monkeypatch):
    import harness.run as train_mod

    def full_disk(obj, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(train_mod, "save_atomic", full_disk)
    assert main(run_args(synth_root, tmp_path)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and ("last.pth" in err or "best.pth" in err)
    record = json.loads((tmp_path / "rec" / "unc_frozen_tiny.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert main(["eval", "--checkpoint", "x.pth", "--dataset", "unc", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in one_line_error(capsys)


def test_profile_refuses_a_cpu_batch_beyond_host_memory(monkeypatch, capsys):
    import harness.profile as profile_mod

    monkeypatch.setattr(profile_mod, "_physical_memory", lambda: 64 * 2**20)  # a 64 MiB machine
    assert main(["profile", "--method", "full", "--preset", "tiny", "--batch-size", "256", "--device", "cpu",
                 "--steps", "1", "--warmup", "0", "--no-flops", "--output", "/nonexistent/never-written"]) == 2
    assert "measured at batch 1 and scaled" in one_line_error(capsys)


def test_loader_benchmark_times_each_lever_against_the_decode_floor(data_copy):
    from datasets.catalog import resolve_paths
    from datasets.rec import RECDataset
    from datasets.tokenize import build_tokenizer
    from harness.loader_bench import per_worker

    index = data_copy / "data/unc/unc_train.pth"
    torch.save(torch.load(index, weights_only=True)[:6], index)  # fewer than the 16 samples of the timed batch
    ds = RECDataset(resolve_paths(data_copy), "unc", "train", build_tokenizer(data_copy / "vocab.txt"), 96,
                    train=True)
    out = per_worker(ds)
    rates = list(out["variants_samples_per_s"].values())
    assert len(rates) == 4 and all(r > 0 for r in rates) and out["decode_floor_samples_per_s"] > 0
    assert out["cpu_pipeline_decoded_once_samples_per_s"] > 0
    assert out["speedup"] == rates[-1] / rates[0] and out["samples"] == 6
    assert set(out["batch_side_cpu_ms_per_sample"]) == {"normalise", "jitter + normalise"}


def test_folders_written_for_data_get_a_plain_mkdir_mode(tmp_path):
    """mkdtemp's 0700 survived the rename: a shared synthetic set or prepared index was private to its writer."""
    import os

    from datasets.files import building
    from datasets.synth import ensure_synthetic

    old = os.umask(0o022)
    try:
        with building(tmp_path / "prepared") as tmp:
            (tmp / "x").write_text("x")
        root = ensure_synthetic(tmp_path / "cache", seed=13, images=5)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o755
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


# ---- non-finite values: refused as options, a diverged run fails, impossible results never reach a table ----------
def test_non_finite_option_values_are_refused(data_copy, tmp_path, capsys):
    for value in (".inf", ".nan", "-.inf"):
        assert main(run_args(data_copy, tmp_path, "--set", f"recipe.lr={value}")) == 2
        assert "recipe option lr must be finite" in one_line_error(capsys)
    assert not (tmp_path / "rec").exists()


def test_a_non_finite_loss_fails_the_run_with_its_step(data_copy, tmp_path, capsys, monkeypatch):
    import harness.engine

    real = harness.engine.rec_loss
    monkeypatch.setattr(harness.engine, "rec_loss",
                        lambda pred, box, *weights: {**real(pred, box), "loss": real(pred, box)["loss"] * float("nan")})
    assert main(run_args(data_copy, tmp_path)) == 2
    assert "the training loss is nan at step 1 (epoch 1): training diverged" in one_line_error(capsys)
    record = json.loads((tmp_path / "rec" / "unc_frozen_tiny.json").read_text())  # strict JSON: no bare NaN
    assert record["status"] == "failed" and "training loss is nan" in record["error"]


@pytest.mark.parametrize("results, message", [
    ({"val": {"accuracy": float("nan"), "miou": 0.5, "n": 10}}, "accuracy is nan"),
    ({"val": {"accuracy": -0.1, "miou": 0.5, "n": 10}}, "accuracy is -0.1"),
    ({"val": {"accuracy": 0.5, "miou": 0.5, "n": 0}}, "n is 0"),
])
def test_records_with_impossible_results_are_refused_where_they_are_read(synth_root, tmp_path, capsys, results,
                                                                          message):
    from harness.records import baseline_records, write_text_atomic
    from datasets.catalog import resolve_paths

    record = baseline_records("unc", {"val": {"central": 0.5, "largest": 0.5, "random": 0.5,
                                              "miou": {"central": 0.5, "largest": 0.5, "random": 0.5}, "n": 10}},
                              resolve_paths(synth_root))[0]
    record["results"] = results
    runs = tmp_path / "runs"
    write_text_atomic(runs / "bad.json", json.dumps(record))  # json.dumps writes NaN; a hand edit could too
    assert main(["table", "--runs", str(runs), "--profiles", str(tmp_path / "none"), "--out", str(tmp_path / "t")]) == 2
    err = one_line_error(capsys)
    assert "bad.json" in err and message in err



# ---- contradictions are refused, not settled silently ----------------------------------------------------------
def test_contradicting_flags_are_refused(data_copy, tmp_path, capsys):
    argv = run_args(data_copy, tmp_path, "--set", "recipe.epochs=3")  # run_args passes --epochs 1
    assert main(argv) == 2
    assert "--epochs 1 contradicts recipe.epochs=3 from --set or --config: give one" in one_line_error(capsys)
    selection = tmp_path / "sel.json"
    selection.write_text(json.dumps({"kind": "selection", "key": "lr_encoder", "dataset": "unc", "split": "val",
                                     "runs": "x", "rule": "x", "methods": {"frozen": {"chosen": 1e-4, "grid": {}}}}))
    assert main(run_args(data_copy, tmp_path, "--selected", str(selection), "--set", "lr_encoder=1.0e-3")) == 2
    assert "--selected gives lr_encoder=0.0001 and --set gives lr_encoder too" in one_line_error(capsys)
    assert main(["suite", "default", "--workers", "0", "--dry-run"]) == 2
    assert "--workers must be >= 1, got 0" in one_line_error(capsys)
    assert main(["select", "--runs", str(tmp_path), "--dataset", "unc", "--key", "bogus",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "select --key 'bogus': choose a numeric recipe option" in one_line_error(capsys)


def test_a_method_that_cannot_apply_fails_before_the_data_loads(tmp_path, capsys, monkeypatch):
    import datasets.index

    monkeypatch.setattr(datasets.index, "load_split", lambda *a, **k: pytest.fail("the data was read first"))
    argv = ["run", "--method", "lora", "--dataset", "unc", "--data-root", str(tmp_path / "nowhere"), "--device", "cpu",
            "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "work")]
    assert main([*argv, "--set", "targets_language=[quary]"]) == 2
    err = one_line_error(capsys)
    assert "LoRA targets_language ['quary'] match no module of the language encoder" in err and "query" in err


# ---- a full disk: one line naming the path, for every writer ---------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs, nearly filled: where the test cannot mount one (no root, no tmpfs), it is skipped."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or 'mount failed'})")
    try:
        (mount / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 96 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_path_for_every_writer(synth_root, full_disk, tmp_path, capsys):
    from test_data_prepare import write_refer

    cases = [  # (argv, the folder it writes in, the flags the fix names)
        (run_args(synth_root, tmp_path, "--work-dir", str(full_disk / "work")), "--output / --work-dir"),
        (["data", "synth", "--root", str(full_disk / "synth"), "--images", "5"], "--root"),
        (["data", "prepare", "--from", "refer", "--refer-root", str(write_refer(tmp_path / "refer")),
          "--dataset", "unc", "--out", str(full_disk / "prepared")], "--out"),
        (["table", "--runs", "results/runs", "--profiles", "results/profile", "--out", str(full_disk / "t")],
         "--out"),
    ]
    for argv, flags in cases:
        free = shutil.disk_usage(full_disk).free
        if free > 8192:  # the small prepared index fits in what the run left: leave it one block
            (full_disk / f"filler{len(flags)}").write_bytes(b"\0" * (free - 4096))
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert str(full_disk) in err and "No space left on device" in err and f"choose another {flags}" in err, err
        assert "inline_container" not in err and "Traceback" not in err
