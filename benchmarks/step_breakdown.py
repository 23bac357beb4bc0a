"""Where a tiny training iteration's time goes on CPU (issue 28's per-sample cost): the data pipeline (training
augmentation in the main process, as CPU runs load), the forward pass with the loss, and backward with the AdamW
step, per method, on the stand-in encoders and synthetic unc; then the frozen encoders' forward alone and the
vision branch alone on the last batch. One torch thread, batch 32, medians over the timed iterations.

    python benchmarks/step_breakdown.py [--methods frozen m2ist full] [--iterations 40] [--warmup 10]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from harness.records import environment, now, write_json_atomic


def breakdown(method_name: str, iterations: int, warmup: int) -> dict:
    from datasets.catalog import get_spec
    from datasets.rec import RECDataset
    from datasets.tokenize import build_tokenizer
    from datasets.transforms import model_inputs
    from harness.losses import rec_loss
    from harness.model import build_model, get_config
    from harness.model.weights import load_language_weights, load_vision_weights
    from harness.recipe import build_recipe
    from harness.train import (RunConfig, build_loader, build_optimizer, prepare_runtime, resolve_data,
                               vocab_size_for, with_stand_in_encoders)
    from methods import apply_method, build_method

    cfg = RunConfig(method=method_name, dataset="unc", stand_in_encoders=True)
    spec = get_spec("unc")
    paths, tok_source, kind, _ = resolve_data(cfg, 0)
    tokenizer = build_tokenizer(tok_source)
    cfg = with_stand_in_encoders(cfg, kind, 0)
    recipe = build_recipe("tiny", "unc")
    model = build_model("tiny", max_query_len=spec.max_query_len, vocab_size=vocab_size_for("tiny", tokenizer))
    load_vision_weights(model, cfg.vision_weights)
    load_language_weights(model, cfg.language_weights)
    method = build_method(method_name)
    apply_method(method, model)
    prepare_runtime(model, recipe, torch.device("cpu"))
    optimizer = build_optimizer(method, model, recipe)
    data = RECDataset(paths, "unc", "train", tokenizer, get_config("tiny").image_size, train=True,
                      max_query_len=spec.max_query_len, cache_images=True)  # as train.run keeps the synthetic set
    batches = iter(build_loader(data, recipe.batch_size, True, recipe, 0, 1))
    times = {"data": [], "forward_loss": [], "backward_step": []}
    model.train()
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        batch = model_inputs(next(batches), torch.device("cpu"))
        t1 = time.perf_counter()
        loss = rec_loss(model(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"]),
                        batch["box"])["loss"]
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t3 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(dt)
    with torch.no_grad():
        parts = {"encoders_forward_no_grad": lambda: model.encode(batch["image"], batch["image_mask"],
                                                                  batch["word_ids"], batch["word_mask"]),
                 "vision_forward_no_grad": lambda: model.visumodel(batch["image"], batch["image_mask"], None)}
        for key, fn in parts.items():
            fn()
            runs = []
            for _ in range(10):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            times[key] = runs
    return {key: 1000 * statistics.median(v) for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=["frozen", "m2ist", "full"])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="results/benchmarks/step_breakdown.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.methods:
        results[name] = breakdown(name, args.iterations, args.warmup)
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in results[name].items()), flush=True)
    write_json_atomic(Path(args.out), {
        "kind": "benchmark", "created_at": now(), "batch_size": 32, "iterations": args.iterations,
        "warmup": args.warmup, "torch_threads": 1, "methods_ms": results, "env": environment(torch.device("cpu")),
        "what": __doc__.split("\n\n")[0].replace("\n", " ")})


if __name__ == "__main__":
    main()
