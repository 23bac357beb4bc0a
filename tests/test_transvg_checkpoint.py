"""TransVG's own checkpoints (djiajunustc/TransVG @c862427 train.py: {'model': state_dict, 'optimizer',
'lr_scheduler', 'epoch', 'args', 'val_accu'}) load into this model key for key: `harness eval` scores them and
`harness run --init-checkpoint` starts from them. The test writes the layout itself, renaming with TransVG's
module names (models/trans_vg.py, visual_model/detr.py, vl_transformer.py; shared/reference/checkpoints.md 3)."""
import argparse

import pytest
import torch

from datasets.tokenize import build_tokenizer
from harness.errors import HarnessError
from harness.model import build_model
from harness.checkpoint_eval import evaluate_checkpoint, load_checkpoint_for_eval
from helpers import random_batch
from harness.records import portable

# our name prefix -> TransVG's
TO_TRANSVG = (("visumodel.backbone.", "visumodel.backbone.0.body."), ("visumodel.encoder.", "visumodel.transformer.encoder."),
              ("vl_transformer.", "vl_transformer.encoder."))


def transvg_state_dict(model) -> dict:
    sd = {}
    for key, value in model.state_dict().items():
        for ours, theirs in TO_TRANSVG:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        sd[key] = value
    h = model.config.language.hidden  # pytorch_pretrained_bert's BertModel has a pooler TransVG never reads
    sd["textmodel.bert.pooler.dense.weight"] = torch.zeros(h, h)
    sd["textmodel.bert.pooler.dense.bias"] = torch.zeros(h)
    return sd


def save_transvg(path, sd):
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"last_epoch": 3},
                "epoch": 3, "args": argparse.Namespace(lr=1e-4, imsize=640, dataset="unc"), "val_accu": 0.81}, path)
    return path


def test_paper_model_has_transvg_s_622_keys_and_parameter_count():
    with torch.device("meta"):
        model = build_model("paper")
        sd = transvg_state_dict(model)
    assert len(sd) == 622
    pooler = sd["textmodel.bert.pooler.dense.weight"].numel() + sd["textmodel.bert.pooler.dense.bias"].numel()
    assert sum(p.numel() for p in model.parameters()) + pooler == 149_745_860  # FrozenBN affines are buffers


@pytest.fixture
def tiny_transvg(synth_root, tmp_path):
    vocab = len(build_tokenizer(str(synth_root / "vocab.txt")))
    torch.manual_seed(7)
    model = build_model("tiny", vocab_size=vocab).eval()
    return model, save_transvg(tmp_path / "TransVG_tiny_unc.pth", transvg_state_dict(model))


def test_transvg_checkpoint_loads_key_for_key(tiny_transvg, capsys):
    model, path = tiny_transvg
    loaded, meta = load_checkpoint_for_eval(path)
    assert meta["method"] == "full" and meta["tokenizer"] is None and meta["preset"] == "tiny"
    assert "2 ignored" in capsys.readouterr().out  # the pooler, reported
    batch = random_batch(model, batch_size=2)[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(*batch), model(*batch), rtol=0, atol=0)


def test_old_bert_gamma_beta_names_load_too(tiny_transvg, tmp_path):
    model, path = tiny_transvg
    sd = torch.load(path, weights_only=False)["model"]
    for key in [k for k in sd if k.startswith("textmodel.") and "LayerNorm" in k]:
        sd[key.replace(".weight", ".gamma").replace(".bias", ".beta")] = sd.pop(key)
    loaded, _ = load_checkpoint_for_eval(save_transvg(tmp_path / "gamma.pth", sd))
    torch.testing.assert_close(loaded.state_dict()["textmodel.bert.embeddings.LayerNorm.weight"],
                               model.state_dict()["textmodel.bert.embeddings.LayerNorm.weight"])


def test_a_missing_key_is_an_error(tiny_transvg, tmp_path):
    _, path = tiny_transvg
    sd = torch.load(path, weights_only=False)["model"]
    del sd["vl_transformer.encoder.layers.0.linear1.weight"]
    with pytest.raises(HarnessError, match="1 missing .*vl_transformer.layers.0.linear1.weight"):
        load_checkpoint_for_eval(save_transvg(tmp_path / "cut.pth", sd))


def test_eval_needs_a_tokenizer_and_scores_the_checkpoint(tiny_transvg, synth_root):
    model, path = tiny_transvg
    with pytest.raises(HarnessError, match="carries no tokenizer: pass --tokenizer"):
        evaluate_checkpoint(path, "unc", data_root=synth_root, device="cpu")
    out = evaluate_checkpoint(path, "unc", data_root=synth_root, device="cpu", batch_size=16,
                              tokenizer=str(synth_root / "vocab.txt"))
    assert set(out) == {"val", "testA", "testB"} and all(r["n"] > 0 for r in out.values())


def test_run_starts_from_a_transvg_checkpoint(tiny_transvg, synth_root, tmp_path):
    from harness.run import RunConfig, run

    _, path = tiny_transvg
    cfg = RunConfig(method="m2ist", dataset="unc", data_root=str(synth_root), tokenizer=str(synth_root / "vocab.txt"),
                    init_checkpoint=str(path), device="cpu", output=str(tmp_path / "rec"), work_dir=str(tmp_path / "w"),
                    recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0})
    record = run(cfg)
    assert record["weights"]["init_checkpoint"] == portable(path) and record["weights"]["pretrained"] is True
    assert "2 ignored" in record["weights"]["loaded"][0] and "0 missing" in record["weights"]["loaded"][0]


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.update({"vl_pos_embed.weight": torch.zeros(5)}), "without the shapes of a TransVG model"),
    (lambda sd: sd.update({"visu_proj.bias": "x"}), "maps 'visu_proj.bias' to a str"),
    (lambda sd: sd.update({3: torch.zeros(1)}), "maps 3 to a Tensor"),
    (lambda sd: sd.update({"visu_proj.bias": __import__("numpy").zeros(3)}), "to a ndarray"),
    (lambda sd: sd.update({"vl_pos_embed.weight": sd["vl_pos_embed.weight"][:10]}), "fewer than [REG] + one word"),
])
def test_a_damaged_transvg_checkpoint_is_one_line(tmp_path, damage, message):
    sd = transvg_state_dict(build_model("tiny"))
    damage(sd)
    path = save_transvg(tmp_path / "damaged.pth", sd)
    with pytest.raises(HarnessError, match=message.replace("[", r"\[").replace("+", r"\+")):
        load_checkpoint_for_eval(path, trust=True)  # numpy values need the trusted unpickler to get this far


def test_a_checkpoint_whose_description_asks_for_a_huge_model_is_refused_before_building_it(tmp_path):
    from dataclasses import asdict, replace

    from harness.model import PRESETS

    model = build_model("tiny")
    huge = replace(PRESETS["tiny"], fusion=replace(PRESETS["tiny"].fusion, d_model=64, ffn=4_000_000, layers=40))
    meta = {"method": "full", "method_config": {}, "model_config": asdict(huge), "tokenizer": None, "data": "real",
            "data_desc": {}}
    torch.save({"model": model.state_dict(), "meta": meta}, tmp_path / "huge.pth")
    with pytest.raises(HarnessError, match=r"asks for a model of [\d,]+ parameters while the file holds"):
        load_checkpoint_for_eval(tmp_path / "huge.pth")
    # stride-0 tensors claim billions of elements over one stored value each: they do not make the file "hold" them
    padded = {**model.state_dict(), **{f"pad{i}": torch.zeros(1).expand(10**9) for i in range(4)}}
    torch.save({"model": padded, "meta": meta}, tmp_path / "stride0.pth")
    with pytest.raises(HarnessError, match=r"asks for a model of [\d,]+ parameters while the file holds"):
        load_checkpoint_for_eval(tmp_path / "stride0.pth")
