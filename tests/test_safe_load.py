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


class CraftedDtype:
    """A structured dtype with an object field whose pickled flags omit the object bits (27 -> 0), so that numpy no
    longer knows its bytes are pointers."""

    def __reduce__(self):
        cls, args, state = np.dtype([("a", "O")]).__reduce__()
        return cls, args, state[:-1] + (0,)


class CraftedArray:
    """numpy's own reduce protocol with forged parts: the state's dtype and bytes (read as object pointers they
    segfault), or the shape `_reconstruct` is asked to allocate."""

    def __init__(self, state=None, shape=None):
        self.state, self.shape = state, shape

    def __reduce__(self):
        reconstruct, (cls, shape, code), _ = np.zeros(1).__reduce__()
        args = (cls, self.shape or shape, code)
        return (reconstruct, args) if self.state is None else (reconstruct, args, self.state)


@pytest.mark.parametrize("crafted", [
    CraftedArray((1, (2,), CraftedDtype(), False, b"A" * 16)),  # exit 139 (segfault) before the fix
    CraftedArray((1, (2,), np.dtype("O"), False, b"A" * 16)),
    CraftedArray((1, (3_000_000_000,), np.dtype("u1"), False, bytes(8))),  # 3 GB asked, 8 bytes in the file
    CraftedArray(shape=(3_000_000_000, 8)),  # 22 GiB asked of _reconstruct itself
], ids=["object-field", "object", "state-shape", "reconstruct-shape"])
def test_a_crafted_numpy_array_is_refused_in_one_line_by_eval_check_and_run(tmp_path, capsys, crafted):
    root = tmp_path / "data_root"
    (root / "data" / "unc").mkdir(parents=True)
    (root / "ln_data").mkdir()
    for split in ("train", "val", "testA", "testB"):
        torch.save([("a.jpg", 1, [1, 2, 3, 4], "x", crafted)], root / "data" / "unc" / f"unc_{split}.pth")
    ckpt = tmp_path / "transvg.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(x=crafted)}, ckpt)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nx\n")
    for argv in (["eval", "--checkpoint", str(ckpt), "--dataset", "unc"],
                 ["data", "check", "--root", str(root), "--dataset", "unc"],
                 ["run", "--method", "frozen", "--dataset", "unc", "--data-root", str(root), "--device", "cpu",
                  "--tokenizer", str(vocab), "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "work")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        # a forged state is refused as such; _reconstruct's own shape is ignored, so that file loads an empty array
        assert ("numpy array" in err) == (crafted.state is not None), err


def test_plain_numpy_arrays_and_scalars_still_load(tmp_path):
    rows = [("a.jpg", 1, np.array([1.5, 2, 3, 4]), "x", np.array(["a", "b"])), np.int64(3),
            np.arange(6, dtype=np.int32).reshape(2, 3).T, np.bool_(True)]
    torch.save(rows, tmp_path / "plain.pth")
    loaded = torch_load(tmp_path / "plain.pth")
    assert np.array_equal(loaded[0][2], rows[0][2]) and list(loaded[0][4]) == ["a", "b"] and loaded[1] == 3
    assert np.array_equal(loaded[2], rows[2]) and loaded[3]
    assert type(loaded[0][2]) is np.ndarray and type(loaded[2]) is np.ndarray  # checked, then handed over as numpy's


class SystemPayload:
    """os.system: torch reports its module as blocked, in other words than for an object it merely does not allow."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


def test_a_blocked_module_is_named_with_the_trust_flag(tmp_path):
    torch.save({"x": SystemPayload()}, tmp_path / "blocked.pth")
    with pytest.raises(UnsafeFileError, match=r"blocked.pth needs the full unpickler \((posix|nt)\.system\).*--trust-pickles"):
        torch_load(tmp_path / "blocked.pth", what="checkpoint")
