"""Where a tiny CPU run's time went before and after the two CPU levers, measured side by side in one process:
the training iteration (the loader's next batch + the training step, what `harness run` times as an iteration) of
each method on synthetic unc from the stand-in encoders, one torch thread as a suite job has.

    python benchmarks/tiny_iteration.py [--methods frozen,m2ist,full] [--out results/benchmarks/tiny_iteration.json]
    python benchmarks/tiny_iteration.py --lever compile   # -> results/benchmarks/tiny_compile.json

--lever layout (the default): before = the backbone in the default memory format and every image decoded per sample
(the pipeline up to b89521c); after = channels-last convolutions (`prepare_runtime`) and the synthetic set kept
decoded (`RECDataset(cache_images=True)`, as `run.run` builds it on CPU). The two alternate in windows of `--window`
iterations on one model, one optimizer and the same data, so that load from anything else on the machine falls on
both alike; the figure is the median iteration of each. The cached set is filled before timing, as from a run's
second epoch on.

--lever compile: before = the model as a run trains it today (both levers above on); after = the same model through
`torch.compile` (inductor's CPU backend, forward and backward), the issue-28 lever "torch.compile on CPU". The first
compiled iteration (the compilation) is timed apart, as `compile_s`; a method whose model inductor cannot compile
gets `compile_error` instead.
"""
from __future__ import annotations

import argparse
import statistics
import time
from itertools import cycle
from pathlib import Path

import torch

from harness.records import environment, now, write_json_atomic


def setup(method: str):
    """A run's model, optimizer and recipe for `method` on synthetic unc, as `run.run` builds them, and the
    training loader over the train split with or without the decoded-image cache."""
    from datasets.catalog import get_spec
    from datasets.rec import RECDataset
    from datasets.tokenize import build_tokenizer
    from harness.model import build_model, get_config
    from harness.model.weights import load_language_weights, load_vision_weights
    from harness.recipe import build_recipe
    from harness.run import RunConfig, resolve_data, vocab_size_for, with_stand_in_encoders
    from harness.engine import build_loader, build_optimizer, prepare_runtime
    from methods import apply_method, build_method, method_defaults

    cfg = RunConfig(method=method, dataset="unc", stand_in_encoders=True)
    spec, meth = get_spec("unc"), build_method(method, {})
    recipe = build_recipe("tiny", "unc", method_defaults(method)["recipe"])
    paths, tok_source, kind, _ = resolve_data(cfg, 0)
    tokenizer = build_tokenizer(tok_source)
    cfg = with_stand_in_encoders(cfg, kind, 0)
    model = build_model("tiny", max_query_len=spec.max_query_len, vocab_size=vocab_size_for("tiny", tokenizer))
    load_vision_weights(model, cfg.vision_weights)
    load_language_weights(model, cfg.language_weights)
    apply_method(meth, model)
    prepare_runtime(model, recipe, torch.device("cpu"))
    data = {cache: RECDataset(paths, "unc", "train", tokenizer, get_config("tiny").image_size, train=True,
                              max_query_len=spec.max_query_len, cache_images=cache) for cache in (False, True)}
    for i in range(len(data[True])):  # fill the cache: a run's epochs after the first
        data[True][i]

    def loader(after: bool):
        gen = torch.Generator().manual_seed(13)
        return cycle(build_loader(data[after], recipe.batch_size, True, recipe, 0, 1, gen))

    return model, build_optimizer(meth, model, recipe), loader


def measure(method: str, lever: str, window: int, rounds: int) -> dict:
    from datasets.transforms import model_inputs
    from harness.losses import rec_loss

    model, optimizer, loader = setup(method)
    vision = model.visumodel
    model.train()
    extra = {}
    if lever == "compile":
        vision.channels_last = True
        vision.backbone.to(memory_format=torch.channels_last)
        models = {False: model, True: torch.compile(model)}

        def variant(after: bool):
            return models[after], loader(True)
    else:
        def variant(after: bool):
            vision.channels_last = after
            vision.backbone.to(memory_format=torch.channels_last if after else torch.contiguous_format)
            return model, loader(after)

    def step(net, batches) -> None:
        batch = model_inputs(next(batches), torch.device("cpu"))
        loss = rec_loss(net(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"]).float(),
                        batch["box"])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if lever == "compile":
        t0 = time.perf_counter()
        step(*variant(True))
        extra["compile_s"] = time.perf_counter() - t0
    times = {"before": [], "after": []}
    for _ in range(rounds):
        for name in times:
            net, batches = variant(name == "after")
            for i in range(window + 1):  # the first after a switch primes oneDNN for the layout: untimed
                t0 = time.perf_counter()
                step(net, batches)
                if i:
                    times[name].append(time.perf_counter() - t0)
    before, after = (statistics.median(times[k]) for k in ("before", "after"))
    return {"before_iteration_s": before, "after_iteration_s": after, "speedup": before / after,
            "iterations_each": len(times["after"]), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="frozen,adapter,lora,m2ist,vlpet,unipt,full")
    parser.add_argument("--lever", choices=("layout", "compile"), default="layout")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", help="default: results/benchmarks/tiny_iteration.json (layout) or "
                        "tiny_compile.json (compile)")
    args = parser.parse_args()
    out = Path(args.out or f"results/benchmarks/tiny_{'compile' if args.lever == 'compile' else 'iteration'}.json")
    torch.set_num_threads(1)
    results = {}
    for method in args.methods.split(","):
        try:
            results[method] = r = measure(method, args.lever, args.window, args.rounds)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # a method whose model inductor cannot compile
            cause = e.inner_exception
            results[method] = {"compile_error": f"{type(cause).__name__}: {' '.join(str(cause).split())[:200]}"}
            print(f"{method}: torch.compile failed: {results[method]['compile_error']}", flush=True)
            continue
        print(f"{method}: {1000 * r['before_iteration_s']:.0f} -> {1000 * r['after_iteration_s']:.0f} ms per "
              f"iteration ({r['speedup']:.2f}x)", flush=True)
    what = __doc__.split("\n\n")[3 if args.lever == "compile" else 2]
    write_json_atomic(out, {
        "kind": "benchmark", "created_at": now(), "lever": args.lever, "methods": results, "batch_size": 32,
        "torch_threads": 1, "env": environment(torch.device("cpu")), "what": what.replace("\n", " ").strip()})


if __name__ == "__main__":
    main()
