"""`harness pretrain`: the synthetic source task's checkpoints load through the real loaders (DETR vision
state dict, HF BERT folder) with no missing keys and the saved values, share the synthetic token ids, are
cached and written atomically, and bad input ends in one clear line."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import harness.pretrain as pretrain
from datasets.synth import vocab_tokens
from datasets.synth_source import captions, sample_source_scene
from datasets.tokenize import build_tokenizer, encode
from harness.cli import main
from harness.errors import HarnessError
from harness.model import build_model
from harness.model.weights import DETR_TO_MODEL, load_language_weights, load_vision_weights
from harness.records import portable

SMALL = dict(images=40, vision_steps=3, vision_batch=8, captions=200, text_steps=3, text_batch=16)
SMALL_FLAGS = ["--images", "40", "--vision-steps", "2", "--captions", "200", "--text-steps", "2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root, info = pretrain.ensure_pretrained(pretrain.PretrainConfig(**SMALL),
                                            out=tmp_path_factory.mktemp("pre") / "out", log=lambda msg: None)
    return root, info


def fresh_model():
    torch.manual_seed(0)
    return build_model("tiny", vocab_size=len(vocab_tokens()))


def test_vision_checkpoint_loads_through_the_detr_loader(pretrained):
    root, _ = pretrained
    saved = torch.load(root / "vision.pth", weights_only=True)["model"]
    assert all(k.startswith(("backbone.0.body.", "input_proj.", "transformer.encoder.")) for k in saved)
    assert not any(k.endswith("num_batches_tracked") for k in saved)
    model = fresh_model()
    report = load_vision_weights(model, root / "vision.pth")
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    state = model.state_dict()
    assert report.loaded == len(saved) == len([k for k in state if k.startswith("visumodel.")])
    for key, value in saved.items():
        mapped = next(dst + key[len(src):] for src, dst in DETR_TO_MODEL if key.startswith(src))
        assert torch.equal(state[mapped], value), key
    # the ResNet trained with ordinary BatchNorm: its statistics are now the FrozenBatchNorm2d buffers
    assert not torch.equal(saved["backbone.0.body.bn1.running_var"], torch.ones_like(saved["backbone.0.body.bn1.running_var"]))


def test_language_folder_loads_through_the_bert_loader(pretrained):
    root, _ = pretrained
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in (root / "bert").iterdir()}
    model = fresh_model()
    report = load_language_weights(model, root / "bert")
    assert report.missing == [] and report.unexpected == []
    assert all(k.startswith("cls.") for k in report.ignored)  # the MLM head, unused by REC
    saved = load_file(root / "bert" / "model.safetensors")
    state = model.state_dict()
    bert_keys = [k for k in state if k.startswith("textmodel.bert.")]
    assert report.loaded == len(bert_keys)
    for key in bert_keys:
        assert torch.equal(state[key], saved["bert." + key.removeprefix("textmodel.bert.")]), key


def test_saved_tokenizer_gives_the_synthetic_ids(pretrained, synth_root):
    root, _ = pretrained
    assert (root / "bert" / "vocab.txt").read_text() == (synth_root / "vocab.txt").read_text()
    ours, theirs = build_tokenizer(root / "bert"), build_tokenizer(synth_root / "vocab.txt")
    phrases = [r[3] for r in torch.load(synth_root / "data/unc/unc_train.pth", weights_only=True)][:50]
    for text in phrases + captions(50, seed=1):
        assert torch.equal(encode(ours, text, 24)[0], encode(theirs, text, 24)[0]), text
        assert "[UNK]" not in ours.tokenize(text)


def test_source_description_and_cache(pretrained, tmp_path):
    root, info = pretrained
    written = json.loads((root / "source.json").read_text())
    assert written == info and written["key"] == pretrain.cache_key(pretrain.PretrainConfig(**SMALL))
    assert "stand-in" in written["kind"] and written["vision"]["steps"] == 3 and written["language"]["steps"] == 3
    assert not list(root.parent.glob(".*partial"))
    # cached: same folder, nothing retrained
    stamp = (root / "vision.pth").stat().st_mtime_ns
    again, _ = pretrain.ensure_pretrained(pretrain.PretrainConfig(**SMALL), out=root, log=pytest.fail)
    assert again == root and (root / "vision.pth").stat().st_mtime_ns == stamp
    # the default folder is keyed by preset, seed and config
    a = pretrain.default_dir(pretrain.PretrainConfig(**SMALL), tmp_path)
    b = pretrain.default_dir(pretrain.PretrainConfig(**{**SMALL, "vision_steps": 4}), tmp_path)
    assert a.parent == b.parent == tmp_path / "pretrained" and a != b and a.name.startswith("tiny-seed13-")


def test_cpu_pretraining_gives_the_same_encoders_whatever_the_callers_thread_count(tmp_path):
    """A suite's pretrain job has 1 thread, `harness pretrain` by hand all cores: one cache key, so one result."""
    caller = torch.get_num_threads()
    roots = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            root, info = pretrain.ensure_pretrained(pretrain.PretrainConfig(**SMALL), out=tmp_path / str(threads),
                                                    log=lambda msg: None)
            assert torch.get_num_threads() == threads  # given back to the caller
            assert f"{pretrain.CPU_THREADS} threads" in info["env"]["device_name"]
            roots.append(root)
    finally:
        torch.set_num_threads(caller)
    one, three = (torch.load(r / "vision.pth", weights_only=True)["model"] for r in roots)
    assert all(torch.equal(one[k], three[k]) for k in one)
    one, three = (load_file(r / "bert" / "model.safetensors") for r in roots)
    assert all(torch.equal(one[k], three[k]) for k in one)


def test_interrupted_pretraining_leaves_nothing_half_written_and_resumes(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    cfg = pretrain.PretrainConfig(**{**SMALL, "seed": 5})
    monkeypatch.setattr(pretrain, "_pretrain_language", broken)
    with pytest.raises(KeyboardInterrupt):
        pretrain.ensure_pretrained(cfg, cache_dir=tmp_path, log=lambda msg: None)
    assert not pretrain.default_dir(cfg, tmp_path).exists()
    monkeypatch.undo()
    messages = []
    root, _ = pretrain.ensure_pretrained(cfg, cache_dir=tmp_path, log=messages.append)
    assert pretrain.is_complete(root) and any("vision stage already done" in m for m in messages)
    assert [p.name for p in (tmp_path / "pretrained").iterdir()] == [root.name]


def test_cli_pretrain_then_run_with_the_weights(synth_root, tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["pretrain", "--out", str(out), *SMALL_FLAGS]) == 0
    text = capsys.readouterr().out
    assert f"written in {out}" in text and "--vision-weights" in text
    assert main(["pretrain", "--out", str(out), "--path-only", *SMALL_FLAGS]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--data-root", str(synth_root), "--max-steps", "1",
                 "--epochs", "1", "--vision-weights", str(out / "vision.pth"), "--language-weights", str(out / "bert"),
                 "--output", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work"), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "runs" / "unc_frozen_tiny.json").read_text())
    # the record names the file portably (records.portable), not where this machine keeps it
    assert record["weights"]["pretrained"] and record["weights"]["vision"] == portable(out / "vision.pth")
    assert all(", 0 missing, 0 unexpected" in line for line in record["weights"]["loaded"])
    assert record["weights"]["source"].startswith(pretrain.KIND)
    # the table's provenance names the stand-in weights
    assert main(["table", "--runs", str(tmp_path / "runs"), "--profiles", str(tmp_path / "none"),
                 "--out", str(tmp_path / "tables")]) == 0
    header = (tmp_path / "tables" / "main.md").read_text().split("## ")[0]
    assert "- encoders: pretrained tiny encoders: synthetic source pretraining (stand-in" in header
    assert "NOT DETR/BERT weights" in header


def test_tiny_synthetic_runs_start_from_the_stand_in_encoders_by_default(tmp_path, monkeypatch):
    import harness.run as train

    monkeypatch.setattr(train, "PretrainConfig", lambda preset: pretrain.PretrainConfig(preset=preset, **SMALL))
    monkeypatch.setenv("REC_BENCH_CACHE", str(tmp_path))
    common = dict(method="frozen", dataset="unc", cache_dir=str(tmp_path), synthetic_images=8, device="cpu",
                  recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 4, "num_workers": 0})
    record = train.run(train.RunConfig(**common, stand_in_encoders=True, output=str(tmp_path / "a"),
                                       work_dir=str(tmp_path / "work_a")))
    assert record["weights"]["source"].startswith(pretrain.KIND)
    # the record names the cache, not where this machine keeps it
    assert record["weights"]["vision"].startswith("$REC_BENCH_CACHE/pretrained/tiny-seed13-")
    assert str(tmp_path) not in (tmp_path / "a" / "unc_frozen_tiny.json").read_text()
    assert all(", 0 missing, 0 unexpected" in line for line in record["weights"]["loaded"])
    random = train.run(train.RunConfig(**common, output=str(tmp_path / "b"), work_dir=str(tmp_path / "work_b")))
    assert not random["weights"]["pretrained"] and random["weights"]["source"] is None


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "full", "--dataset", "unc", "--random-init", "--vision-weights", "x.pth"],
     r"error: --random-init contradicts"),
    (["pretrain", "--preset", "paper"], r"error: `harness pretrain` makes stand-in weights for the tiny preset only"),
    (["pretrain", "--out", "{tmp}/notempty", "--vision-steps", "1"], r"error: .*notempty exists and is not a pretraining"),
    (["pretrain", "--out", "{tmp}/x", "--vision-steps", "0"], r"error: impossible pretraining config"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "file.txt").write_text("mine")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert re.match(message, err) and err.count("\n") == 1


def test_other_config_in_the_same_folder_is_refused(pretrained):
    root, _ = pretrained
    with pytest.raises(HarnessError, match="another configuration"):
        pretrain.ensure_pretrained(pretrain.PretrainConfig(**{**SMALL, "text_steps": 4}), out=root, log=lambda m: None)


def test_source_scenes_differ_from_the_target_scenes():
    import random

    rng = random.Random(0)
    scenes = [sample_source_scene(rng) for _ in range(50)]
    assert all(abs(s.width - s.height) <= 16 for s in scenes)  # square-ish; the REC canvases are 4:3 / 3:2
    assert max(len(s.objects) for s in scenes) > 5  # more crowded than any REC scene
