"""Which levers shorten the tiny V-L fusion's plateau (issue 28): the probe of benchmarks/fusion_plateau.py (fusion,
projections and head trained alone on cached features of the frozen stand-in encoders, synthetic unc, eval
transform, AdamW at the tiny recipe's 1e-3, batch 32, its loss weights) under changes to the fusion, the loss, the
data, the stand-in pretraining and the optimiser, each on several seeds (a single seed's plateau exit moves by
hundreds of steps).

    python benchmarks/fusion_levers.py [--steps 2000] [--seeds 0,1,2] [--workers 2] [--only LABEL ...]

Resumable: a lever and seed already in the output file (at the same --steps and --every) is kept, not rerun; each
probe's result names the commit it ran at.

Each lever is one change to the tiny problem as committed: `fusion` / `image_size` change the tiny preset, `loss`
the box-loss weights, `scene` the synthetic generator's object sides (a factor) and count (in a cache of its own),
`pretrain` the stand-in pretraining's settings (harness.pretrain.PretrainConfig; pretrained once before the
probes, cached), `text_blind` zeroes the text features (what the fusion learns without the expression). Each
result is val Acc@0.5 every `--every` steps and the share of val expressions whose predicted centre lies inside
the target's box (`val_centre_in_box`: finding the object apart from placing its box precisely).
results/benchmarks/fusion_levers_v1.json holds the probes of the version-1 problem that chose version 2 (levers
named against version 1: its post-norm fusion, 500-step pretraining and smaller objects; each probe names its commit).
"""
from __future__ import annotations

import argparse
import functools
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

import datasets.synth_scenes as scenes
from datasets.synth import GENERATOR_VERSION
import harness.run
from fusion_plateau import encoder_features, train
from harness.model import config
from harness.pretrain import PretrainConfig, ensure_pretrained
from harness.records import environment, git_state, now, write_json_atomic

TINY = config.PRESETS["tiny"]  # as committed; each probe derives its preset from it (pool workers are reused)
SIDES, OBJECTS = scenes.SIDES, scenes.OBJECTS  # the generator's, likewise


def scene_cache(name: str, folder: str = "scenes"):
    """A cache of its own for a changed scene generator (the synthetic set's cache key does not see the generator),
    sharing the default cache's stand-in encoders (their source task does not depend on the REC scenes)."""
    from harness.device import DEFAULT_CACHE

    cache = DEFAULT_CACHE / folder / name
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "pretrained").exists():
        (DEFAULT_CACHE / "pretrained").mkdir(parents=True, exist_ok=True)
        try:
            (cache / "pretrained").symlink_to(DEFAULT_CACHE / "pretrained", target_is_directory=True)
        except FileExistsError:  # another probe of the same scenes made it first
            pass
    return cache

# Each lever changes the tiny problem as committed (version 2: issue 28's choices, each undone here) in one way.
LEVERS = (
    ("the tiny problem as committed", {}),
    ("text-blind (text features zeroed)", {"text_blind": True}),
    ("post-norm fusion (TransVG's default)", {"fusion": {"normalize_before": False}}),
    ("with TransVG's final LayerNorm", {"fusion": {"final_norm": True}}),
    ("TransVG's loss weights (L1 x1, GIoU x1)", {"loss": {"l1_weight": 1.0, "giou_weight": 1.0}}),
    ("version-1 vision pretraining (500 steps, 2,400 images)", {"pretrain": {"vision_steps": 500, "images": 2400}}),
    ("version-1 objects (2/3 the sides, 3-5 per scene)", {"scene": {"scale": 2 / 3, "objects": [3, 5]}}),
    ("batch 16", {"batch": 16}),
    ("lr 3e-3", {"lr": 3e-3}),
    ("AdamW betas (0.9, 0.98)", {"betas": (0.9, 0.98)}),
)


def probe(label: str, lever: dict, seed: int, steps: int, every: int) -> dict:
    """One lever at one seed, in a fresh process (the preset is changed in place for `fusion` and `image_size`)."""
    torch.set_num_threads(1)
    config.PRESETS["tiny"] = replace(TINY, image_size=lever.get("image_size", TINY.image_size),
                                     fusion=replace(TINY.fusion, **lever.get("fusion", {})))
    scenes.SIDES, scenes.OBJECTS = SIDES, OBJECTS  # pool workers are reused: back to the generator's own
    cache = None
    if "scene" in lever:
        scale, objects = lever["scene"]["scale"], tuple(lever["scene"]["objects"])
        scenes.SIDES = {k: (round(a * scale), round(b * scale)) for k, (a, b) in SIDES.items()}
        scenes.OBJECTS = objects
        cache = scene_cache(f"v{GENERATOR_VERSION}-x{scale:.3g}-objects{objects[0]}-{objects[1]}")
    harness.run.PretrainConfig = functools.partial(PretrainConfig, **lever.get("pretrain", {}))  # likewise
    make_model, features = encoder_features(images=lever.get("images"), cache_dir=cache)
    if lever.get("text_blind"):
        for split in features.values():
            split[2] = torch.zeros_like(split[2])
    model = make_model(seed)
    result = train(model, features, steps, every, seed=seed, betas=lever.get("betas", (0.9, 0.999)),
                   lr=lever.get("lr", 1e-3), batch=lever.get("batch", 32),
                   loss_weights=lever.get("loss", {}))
    curve = " ".join(f"{100 * c['val_accuracy']:.0f}" for c in result["curve"])
    print(f"{label}, seed {seed}: val Acc@0.5 every {every} steps {curve}", flush=True)
    return {**result, "train_samples": len(features["train"][0]), "val_samples": len(features["val"][0]),
            "git": git_state()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2, help="probes in parallel, one torch thread each")
    parser.add_argument("--only", nargs="*", help="labels (or their first words) of the levers to run")
    parser.add_argument("--out", default="results/benchmarks/fusion_levers.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = [(label, lever) for label, lever in LEVERS
              if not args.only or any(label.startswith(o) for o in args.only)]
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    done = {label: entry for label, entry in old.get("levers", {}).items()  # the same schedule and probe points
            if old.get("steps") == args.steps
            and all(r["curve"][0]["step"] == args.every for r in entry["seeds"].values())}
    results = {label: {"lever": entry["lever"], "seeds": dict(entry["seeds"])} for label, entry in done.items()}
    for label, lever in chosen:  # once, before the probes that share it run in parallel
        if "pretrain" in lever:
            ensure_pretrained(PretrainConfig(preset="tiny", **lever["pretrain"]), cache_dir=scene_cache("pretrain"))
    with ProcessPoolExecutor(args.workers) as pool:
        todo = [(label, lever, seed) for label, lever in chosen for seed in seeds
                if str(seed) not in done.get(label, {}).get("seeds", {})]
        futures = {(label, seed): pool.submit(probe, label, lever, seed, args.steps, args.every)
                   for label, lever, seed in todo}
        for (label, seed), future in futures.items():
            entry = results.setdefault(label, {"lever": dict(LEVERS)[label], "seeds": {}})
            entry["seeds"][str(seed)] = future.result()
            write_json_atomic(out, {  # after every probe: an interrupted benchmark resumes from here
                "kind": "benchmark", "created_at": now(), "steps": args.steps, "every": args.every,
                "generator_version": GENERATOR_VERSION,
                "levers": results, "env": environment(torch.device("cpu")),
                "what": __doc__.split("\n\n")[0].replace("\n", " ")})


if __name__ == "__main__":
    main()
