"""Safe loading: index, weight and checkpoint files never run code they carry unless --trust-pickles says so."""
import argparse

import numpy as np
import pytest
import torch

from datasets.catalog import resolve_paths
from datasets.index import load_split
from datasets.safe_load import UnsafeFileError, torch_load
from harness.cli import main
from harness.model.weights import read_checkpoint


class Payload:
    """Unpickling this calls exec(), which writes a file: what a malicious .pth could do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def evil_file(path, target, obj=None):
    torch.save(obj if obj is not None else {"model": {"w": torch.zeros(1)}, "extra": Payload(target)}, path)
    return path


def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "written_by_the_pickle"
    path = evil_file(tmp_path / "evil.pth", target)
    with pytest.raises(UnsafeFileError, match=r"evil.pth needs the full unpickler \((builtins\.)?exec\).*--trust-pickles"):
        torch_load(path, what="checkpoint")
    assert not target.exists()
    torch_load(path, trust=True)  # the payload is real: the full unpickler runs it
    assert target.read_text() == "pwned"


def test_real_checkpoint_contents_load_without_trust(tmp_path):
    """What DETR/TransVG checkpoints hold besides tensors: argparse args (with a path), numpy values."""
    import pathlib

    ckpt = {"model": {"w": torch.ones(2)}, "optimizer": {}, "epoch": 3, "val_accu": np.float64(0.8),
            "args": argparse.Namespace(lr=1e-4, detr_model=pathlib.PosixPath("saved/detr.pth"), imsize=640)}
    torch.save(ckpt, tmp_path / "transvg.pth")
    loaded = read_checkpoint(tmp_path / "transvg.pth")
    assert loaded["args"].imsize == 640 and loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_index_weights_and_eval_refuse_unsafe_files_in_one_line(tmp_path, capsys):
    target = tmp_path / "written_by_the_pickle"
    root = tmp_path / "data_root"
    (root / "data" / "unc").mkdir(parents=True)
    (root / "ln_data").mkdir()
    index = root / "data" / "unc" / "unc_val.pth"
    evil_file(index, target, [("a.jpg", Payload(target), [1, 2, 3, 4], "x", "")])
    with pytest.raises(UnsafeFileError, match="index file .*unc_val.pth"):
        load_split(resolve_paths(root), "unc", "val")
    assert not target.exists()
    weights = evil_file(tmp_path / "detr.pth", target)
    for argv in (["run", "--method", "frozen", "--dataset", "unc", "--vision-weights", str(weights)],
                 ["run", "--method", "frozen", "--dataset", "unc", "--init-checkpoint", str(weights)],
                 ["eval", "--checkpoint", str(weights), "--dataset", "unc"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--trust-pickles" in err and str(weights) in err, err
        assert not target.exists()
    load_split(resolve_paths(root, trust_pickles=True), "unc", "val")  # explicitly trusted: it runs
    assert target.exists()
