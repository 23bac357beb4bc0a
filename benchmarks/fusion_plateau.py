"""How long the tiny V-L fusion sits on its plateau, and what moves it: the fusion, projections and head trained
alone on cached features of the frozen stand-in encoders (synthetic unc, eval transform, no augmentation), with
the tiny recipe's optimiser (AdamW, weight decay 1e-4, no schedule) under a few settings.

    python benchmarks/fusion_plateau.py [--steps 2000] [--out results/benchmarks/fusion_plateau.json]

This is the `frozen` method without augmentation, about 10x cheaper per step than a run, so settings can be
compared in minutes. Each setting reports val Acc@0.5 every `--every` steps; the question is when it leaves the
plateau (Acc@0.5 of a few percent: the mean box) in steps and in samples seen. It measures the tiny problem as
committed; results/benchmarks/fusion_plateau_v1.json is its output on the version-1 problem (before issue 28;
the commit is in the file).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.records import environment, now, write_json_atomic

# (label, settings): the tiny recipe's rate for what starts from scratch is 1e-3 (1e-4 x lr_scale 10)
SETTINGS = (
    ("recipe (lr 1e-3, batch 32)", {}),
    ("recipe, seed 1", {"seed": 1}),
    ("lr 5e-4", {"lr": 5e-4}),
    ("lr 2e-3", {"lr": 2e-3}),
    ("lr 3e-3", {"lr": 3e-3}),
    ("300-step linear warm-up", {"warmup": 300}),
    ("batch 64", {"batch": 64}),
)


def stand_in(images: int | None = None, cache_dir=None):
    """(make_model(seed): the tiny model with the stand-in encoders and a fusion initialised from `seed`,
    split(name): that split of synthetic unc with the eval transform). `images`: the size of the synthetic set (None:
    the generator's default); `cache_dir`: where that set and the encoders are cached."""
    from datasets.catalog import get_spec
    from datasets.rec import RECDataset
    from datasets.tokenize import build_tokenizer
    from harness.model import build_model, get_config
    from harness.model.weights import load_language_weights, load_vision_weights
    from harness.run import RunConfig, resolve_data, vocab_size_for, with_stand_in_encoders

    cfg = RunConfig(method="frozen", dataset="unc", stand_in_encoders=True, synthetic_images=images,
                    cache_dir=str(cache_dir) if cache_dir else None)
    spec = get_spec("unc")
    paths, tok_source, kind, _ = resolve_data(cfg, 0)
    tokenizer = build_tokenizer(tok_source)
    cfg = with_stand_in_encoders(cfg, kind, 0)

    def make_model(seed: int):
        torch.manual_seed(seed)
        model = build_model("tiny", max_query_len=spec.max_query_len, vocab_size=vocab_size_for("tiny", tokenizer))
        load_vision_weights(model, cfg.vision_weights)
        load_language_weights(model, cfg.language_weights)
        return model

    def split(name: str):
        return RECDataset(paths, "unc", name, tokenizer, get_config("tiny").image_size, train=False,
                          max_query_len=spec.max_query_len)

    return make_model, split


def encoder_features(images: int | None = None, cache_dir=None):
    """(make_model(seed) as `stand_in`, {split: (vision features, vision mask, text features, text mask, box)} for
    train and val)."""
    from datasets.transforms import model_inputs
    from harness.engine import build_loader
    from harness.recipe import build_recipe

    make_model, split = stand_in(images, cache_dir)
    model = make_model(0).eval()
    features = {}
    for name in ("train", "val"):
        data = split(name)
        parts = []
        with torch.no_grad():
            for batch in build_loader(data, 64, False, build_recipe("tiny", "unc"), 0, 1):
                batch = model_inputs(batch, torch.device("cpu"))
                vis, txt = model.encode(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"])
                parts.append((vis.features, vis.mask, txt.features, txt.mask, batch["box"]))
        features[name] = [torch.cat(p) for p in zip(*parts)]
    return make_model, features


def train(model, features, steps: int, every: int, lr=1e-3, batch=32, warmup=0, seed=0, betas=(0.9, 0.999),
          loss_weights=None) -> dict:
    """`loss_weights`: {l1_weight, giou_weight}, by default the tiny recipe's."""
    from harness.evaluate import score_boxes
    from harness.losses import rec_loss
    from harness.model.transvg import component_of
    from harness.recipe import build_recipe

    tiny = build_recipe("tiny", "unc")
    loss_weights = {"l1_weight": tiny.l1_weight, "giou_weight": tiny.giou_weight, **(loss_weights or {})}

    params = [p for n, p in model.named_parameters() if component_of(n) in ("fusion", "head")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, betas=betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    train_set, val = features["train"], features["val"]
    gen = torch.Generator().manual_seed(seed)
    curve, step, t0 = [], 0, time.perf_counter()
    while step < steps:
        order = torch.randperm(len(train_set[0]), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            model.train()
            boxes = model.fuse(*(x[idx] for x in train_set[:4]))
            loss = rec_loss(boxes, train_set[4][idx], **loss_weights)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % every == 0:
                model.eval()
                with torch.no_grad():
                    pred = model.fuse(*val[:4])
                correct, _ = score_boxes(pred, val[4])
                # selection apart from precision: the predicted centre inside the target's box
                inside = ((pred[:, :2] - val[4][:, :2]).abs() < val[4][:, 2:] / 2).all(1)
                curve.append({"step": step, "samples": step * batch, "val_accuracy": correct.float().mean().item(),
                              "val_centre_in_box": inside.float().mean().item()})
            if step >= steps:
                break
    return {"settings": {"lr": lr, "batch": batch, "warmup": warmup, "seed": seed}, "curve": curve,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--out", default="results/benchmarks/fusion_plateau.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    make_model, features = encoder_features()
    results = {}
    for label, settings in SETTINGS:
        seed = settings.get("seed", 0)  # the fusion's initialisation and the sample order
        results[label] = train(make_model(seed), features, args.steps, args.every, **settings)
        print(f"{label}: val Acc@0.5 every {args.every} steps "
              + " ".join(f"{100 * c['val_accuracy']:.0f}" for c in results[label]["curve"]), flush=True)
    write_json_atomic(Path(args.out), {
        "kind": "benchmark", "created_at": now(), "steps": args.steps, "train_samples": len(features["train"][0]),
        "settings": results, "env": environment(torch.device("cpu")),
        "what": __doc__.split("\n\n")[0].replace("\n", " ")})


if __name__ == "__main__":
    main()
