"""Where a tiny training iteration's time goes on CPU (issue 28's per-sample cost): the data pipeline (training
augmentation in the main process over the decoded-image cache, as CPU runs load from their second epoch on; the
run built by benchmarks/tiny_iteration.py's setup), the forward pass with the loss, and backward with the AdamW
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
    from datasets.transforms import model_inputs
    from harness.losses import rec_loss
    from tiny_iteration import setup

    model, optimizer, loader = setup(method_name)  # as run.run builds them; the decoded-image cache filled
    batches = loader(True)
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
