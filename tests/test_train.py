"""Training loop: records, exact resume, DDP on gloo, overfitting a fixed batch, frozen encoders."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from helpers import tiny_model

import harness.engine as engine_mod
import harness.run as train_mod
from datasets.synth import ensure_synthetic
from harness.cli import main
from harness.errors import HarnessError
from harness.losses import rec_loss
from harness.records import read_record
from harness.recipe import build_recipe
from harness.run import RunConfig, run
from methods import apply_method, build_method, method_defaults

IMAGES = 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    ensure_synthetic(path, seed=13, images=IMAGES)
    return path


def config(cache, tmp_path, **kw):
    base = RunConfig(method="full", dataset="unc", preset="tiny", cache_dir=str(cache), synthetic_images=IMAGES,
                     output=str(tmp_path / "records"), work_dir=str(tmp_path / "work"), device="cpu",
                     recipe_overrides={"epochs": 1, "batch_size": 8, "num_workers": 0})
    return replace(base, **kw)


def test_run_writes_a_valid_record(cache, tmp_path):
    cfg = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 2, "batch_size": 8, "num_workers": 0})
    record = run(cfg)
    on_disk = read_record(tmp_path / "records" / "unc_full_tiny.json")  # validates the schema
    assert on_disk["results"] == json.loads(json.dumps(record["results"]))
    assert set(record["results"]) == {"val", "testA", "testB"}
    assert all(r["n"] > 0 and 0 <= r["accuracy"] <= 1 for r in record["results"].values())
    assert record["data"] == "synthetic" and record["dataset_label"].startswith("synthetic")
    assert record["status"] == "ok" and record["train"]["step"] == 2
    assert record["params"]["trainable"] > record["params"]["encoder_side_trainable"] > 0
    assert record["env"]["git"]["commit"] and record["weights"]["pretrained"] is False
    assert record["env"]["tf32"] == {"matmul": False, "cudnn": True}  # optimized runtime: full fp32 matmuls
    assert (tmp_path / "work" / "unc_full_tiny" / "last.pth").exists()


def test_resume_continues_exactly(cache, tmp_path, monkeypatch):
    recipe = {"epochs": 3, "lr_drop": 2, "batch_size": 8, "num_workers": 0}
    straight = run(config(cache, tmp_path / "a", recipe_overrides=recipe))

    real_save, saves = train_mod.save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "last.pth":
            saves.append(path)
            if len(saves) == 1:
                raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(train_mod, "save_atomic", save_then_die)
    cfg = config(cache, tmp_path / "b", recipe_overrides=recipe)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(train_mod, "save_atomic", real_save)
    interrupted = read_record(tmp_path / "b" / "records" / "unc_full_tiny.json")
    assert interrupted["status"] == "interrupted" and "after epoch 1" in interrupted["error"]
    resumed = run(cfg)  # the same command resumes: no flag needed
    assert resumed["train"]["history"] == straight["train"]["history"]
    assert resumed["results"] == straight["results"]


def test_resume_refuses_another_configuration(cache, tmp_path):
    run(config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0}))
    other = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 4, "num_workers": 0})
    with pytest.raises(HarnessError, match="another configuration: pass --restart"):
        run(other)
    assert (tmp_path / "work" / "unc_full_tiny" / "last.pth").exists()  # refused, nothing deleted
    redone = run(replace(other, skip_done=True))  # run_all's mode: the old checkpoint is stale, start afresh
    assert redone["status"] == "ok" and redone["recipe"]["batch_size"] == 4 and redone["train"]["step"] == 1


def test_reuse_copies_a_record_of_the_same_configuration_and_trains_another(cache, tmp_path):
    recipe = {"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0}
    published = run(config(cache, tmp_path / "default", recipe_overrides=recipe))
    # the sweep's grid point at the published rate: another run id and --set override, the same computation
    grid = config(cache, tmp_path / "sweep", recipe_overrides={**recipe, "lr_encoder": 1e-5}, tag="lr_encoder=1e-05",
                  set_overrides={"method": {}, "recipe": {"lr_encoder": 1e-5}}, reuse=str(tmp_path / "default" / "records"))
    copied = run(grid)
    on_disk = read_record(tmp_path / "sweep" / "records" / "unc_full_tiny_lr_encoder=1e-05.json")
    assert on_disk == json.loads(json.dumps(copied))
    assert copied["reused_from"].endswith("/unc_full_tiny.json")  # portable: no machine paths
    assert copied["run_id"] == "unc_full_tiny_lr_encoder=1e-05" and copied["overrides"]["recipe"] == {"lr_encoder": 1e-5}
    assert copied["results"] == published["results"] and copied["env"] == published["env"]
    assert not (tmp_path / "sweep" / "work").exists()  # nothing trained
    other = run(replace(grid, recipe_overrides={**recipe, "lr_encoder": 1e-4}, tag="lr_encoder=1e-04",
                        set_overrides={"method": {}, "recipe": {"lr_encoder": 1e-4}}))
    assert "reused_from" not in other and other["config_hash"] != published["config_hash"]
    with pytest.raises(HarnessError, match="--reuse .*no such folder"):
        run(replace(grid, reuse=str(tmp_path / "missing")))


def test_restart_deletes_the_checkpoints_saying_so(cache, tmp_path, capsys):
    cfg = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0})
    run(cfg)
    capsys.readouterr()
    again = run(cfg)  # resumes after the last epoch: nothing left to train, same record
    assert "resuming unc_full_tiny after epoch 1" in capsys.readouterr().out and again["train"]["step"] == 1
    run(replace(cfg, restart=True))
    out = capsys.readouterr().out
    assert "--restart: deleting" in out and "last.pth" in out and "resuming" not in out


def test_final_evaluation_refuses_a_best_checkpoint_of_another_run(cache, tmp_path):
    cfg = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0})
    run(cfg)
    best = tmp_path / "work" / "unc_full_tiny" / "best.pth"
    ckpt = torch.load(best, weights_only=True)
    ckpt["config_hash"] = "another-run"
    torch.save(ckpt, best)
    with pytest.raises(HarnessError, match="best.pth is not this run's best checkpoint"):
        run(cfg)


def test_a_second_run_with_the_same_run_id_refuses_naming_the_holder(cache, tmp_path):
    run_dir = tmp_path / "work" / "unc_full_tiny"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from harness.run import RunLock\n"
        f"with RunLock(Path({str(run_dir)!r})):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0})
        with pytest.raises(HarnessError, match=f"is in use by another run \\(pid {holder.pid}\\)"):
            run(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert run(cfg)["status"] == "ok"  # the kernel released the dead holder's lock


def test_ddp_gloo_two_processes(cache, tmp_path):
    env = {**os.environ, "REC_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "harness.cli", "run", "--method", "frozen", "--dataset", "unc", "--preset", "tiny",
           "--synthetic-images", str(IMAGES), "--epochs", "1", "--max-steps", "2", "--batch-size", "4",
           "--num-workers", "0", "--device", "cpu", "--random-init", "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = read_record(tmp_path / "rec" / "unc_frozen_tiny.json")
    assert record["world_size"] == 2
    single = run(RunConfig(method="frozen", dataset="unc", cache_dir=str(cache), synthetic_images=IMAGES,
                           output=str(tmp_path / "rec1"), work_dir=str(tmp_path / "w1"), device="cpu",
                           recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 4, "num_workers": 0}))
    # every evaluation sample is scored once across the two ranks: no padding duplicates
    assert {s: r["n"] for s, r in record["results"].items()} == {s: r["n"] for s, r in single["results"].items()}


def test_overfits_a_fixed_batch(cache):
    from datasets.catalog import resolve_paths
    from datasets.rec import RECDataset, collate
    from datasets.transforms import model_inputs
    from datasets.tokenize import build_tokenizer

    root = ensure_synthetic(cache, seed=13, images=IMAGES)
    tok = build_tokenizer(root / "vocab.txt")
    ds = RECDataset(resolve_paths(root), "unc", "train", tok, 160, train=True, augment=False)
    batch = model_inputs(collate([ds[i] for i in range(4)]), "cpu")
    model = tiny_model(vocab_size=len(tok))
    apply_method(build_method("full"), model)
    model.eval()  # no dropout: a clean optimisation problem
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(120):
        loss = rec_loss(model(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"]),
                        batch["box"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("method", ["full", "vlpet", "lora", "m2ist"])
def test_lr_scale_speeds_up_only_what_starts_from_scratch(method):
    model = tiny_model()
    own = [p for name, p in model.named_parameters() if name.startswith(("visumodel.", "textmodel."))]
    meth = build_method(method)
    apply_method(meth, model)
    recipe = build_recipe("tiny", "unc", method_defaults(method)["recipe"])
    engine_mod.prepare_runtime(model, recipe, torch.device("cpu"))  # folds BatchNorms: the convs get wrapped
    optimizer = engine_mod.build_optimizer(meth, model, recipe)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    own_ids = {id(p) for p in own}
    for name, p in trainable.items():
        if id(p) in own_ids:
            expected = recipe.lr_encoder  # pretrained: never scaled
        elif name.startswith(("visumodel.", "textmodel.", "side.")):
            expected = recipe.lr_encoder * recipe.lr_scale  # the method's own modules
        else:
            expected = recipe.lr * recipe.lr_scale  # fusion and head
        assert lr_of[id(p)] == pytest.approx(expected), name
    if method in ("full", "vlpet"):  # these do train encoder weights (vlpet: its LayerNorms)
        assert any(id(p) in own_ids for p in trainable.values())
    if method == "full":
        assert any("backbone" in name and id(p) in own_ids for name, p in trainable.items())


def test_frozen_leaves_every_encoder_parameter_without_gradient():
    model = tiny_model()
    apply_method(build_method("frozen"), model)
    from helpers import random_batch

    image, image_mask, word_ids, word_mask, box = random_batch(model)
    rec_loss(model(image, image_mask, word_ids, word_mask), box)["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("visumodel.", "textmodel.")):
            assert p.grad is None, name
        else:
            assert p.grad is not None, name


def test_train_loader_drops_the_last_partial_batch_eval_keeps_it():
    """TransVG/M2IST train.py: drop_last=True for training only."""
    recipe = build_recipe("tiny", "unc", {"num_workers": 0})
    assert len(engine_mod.build_loader(list(range(10)), 4, True, recipe, 0, 1, torch.Generator())) == 2
    assert len(engine_mod.build_loader(list(range(10)), 4, False, recipe, 0, 1)) == 3


def test_cli_errors_are_one_line(cache, tmp_path, capsys):
    assert main(["run", "--method", "nope", "--dataset", "unc"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["run", "--method", "full", "--dataset", "unc", "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {epochs: 1, warp: 9}\n")
    assert main(["run", "--method", "full", "--dataset", "unc", "--config", str(bad)]) == 2
    assert "unknown recipe option(s) warp" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["run", "--method", "full", "--dataset", "unc", "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err


def test_eval_command_scores_a_checkpoint(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REC_BENCH_CACHE", str(cache))
    cfg = config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 8, "num_workers": 0})
    record = run(cfg)
    best = tmp_path / "work" / "unc_full_tiny" / "best.pth"
    # eval on the default synthetic set of the same size: rebuilt from the checkpoint alone
    from harness.checkpoint_eval import evaluate_checkpoint

    out = evaluate_checkpoint(best, "unc", cache_dir=str(cache), device="cpu", synthetic_images=IMAGES)
    assert out.keys() == record["results"].keys()
    for split, res in out.items():
        assert res["n"] == record["results"][split]["n"]
        assert res["outcomes"] == record["results"][split]["outcomes"]  # every expression's hit, in index order
        assert res["accuracy"] == pytest.approx(record["results"][split]["accuracy"])
        assert res["miou"] == pytest.approx(record["results"][split]["miou"], abs=1e-6)


def test_recipe_loss_weights_reach_the_training_loss(cache, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(engine_mod, "rec_loss", lambda p, b, *weights: seen.append(weights) or rec_loss(p, b, *weights))
    run(config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 4, "num_workers": 0,
                                                  "l1_weight": 5.0, "giou_weight": 2.0}))
    assert seen == [(5.0, 2.0)]
    with pytest.raises(HarnessError, match="l1_weight must be >= 0"):
        build_recipe("tiny", "unc", {"l1_weight": -1.0})


def test_the_record_names_the_code_the_run_started_with(cache, tmp_path, monkeypatch):
    """A commit made while a run trains is not what ran: the record keeps the git state read before training."""
    import harness.records as records_mod

    state = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(records_mod, "git_state", lambda cwd=None: dict(state))
    monkeypatch.setattr(engine_mod, "rec_loss", lambda *a: state.update(commit="b" * 40) or rec_loss(*a))
    record = run(config(cache, tmp_path, recipe_overrides={"epochs": 1, "max_steps": 1, "batch_size": 4,
                                                           "num_workers": 0}))
    assert state["commit"] == "b" * 40 and record["env"]["git"]["commit"] == "a" * 40
