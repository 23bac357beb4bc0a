"""`harness profile`: the efficiency figures of one method on synthetic tensors at the preset's real shapes
(image size, query length of the dataset, BERT vocabulary), ending in a record of kind "profile".

Figures (DESIGN.md "Counting and measuring"):
- parameters: encoder-side tunable, all trainable, total, % (harness.model.count_parameters);
- FLOPs: fvcore forward at batch 1 with eager attention (GMACs, and GFLOPs = 2 x GMACs) and
  FlopCounterMode training-step FLOPs at the training batch (harness.flops);
- memory: on CUDA, torch.cuda.max_memory_allocated (the field's "GPU memory") and max_memory_reserved over
  the timed steps after reset_peak_memory_stats; model, gradients and AdamW state are alive throughout and
  included; the allocated baseline before the steps is stored too. On CPU no allocator peak exists, so the
  record holds a training-state proxy instead: bytes autograd saves for backward in one step (tensors packed
  by saved_tensors_hooks, deduplicated by storage, parameters excluded) + parameters and buffers +
  gradients + AdamW state. The proxy is computed on CUDA as well, so devices can be compared on it;
- time: real AdamW steps (forward, L1 + GIoU, backward, optimizer step; bf16 autocast with --amp) on one
  synthetic batch, the median over the timed steps after warm-up, each step synchronised; samples/s; epoch
  time extrapolated from the median (labelled so) when the train split's size is known.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from harness import records
from harness.errors import HarnessError

# Train-split sizes verified in reference/datasets.md (expressions); no other size is assumed.
KNOWN_TRAIN_SIZES = {"unc": (120_624, "RefCOCO (unc) train expressions, reference/datasets.md")}
CPU_MEMORY_WHAT = ("CPU proxy, not an allocator peak: bytes autograd saves for backward in one training step "
                   "(saved_tensors_hooks, deduplicated by storage, parameters excluded) + parameters and buffers "
                   "+ gradients + AdamW state")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def precision_name(amp: bool) -> str:
    return "bf16-autocast" if amp else "fp32"


def record_name(method: str, preset: str, device: str, precision: str, batch_size: int,
                runtime: str = "optimized") -> str:
    return f"{method}_{preset}_{device}_{precision}_b{batch_size}" + ("_released" if runtime == "released" else "")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def train_size_for(dataset: str, train_size=None, data_root=None):
    """(size, source) of the dataset's train split, or (None, reason) when unknown."""
    if train_size is not None:
        if train_size < 1:
            raise HarnessError(f"--train-size must be >= 1, got {train_size}")
        return train_size, "--train-size"
    if data_root is not None:
        from datasets.catalog import resolve_paths
        from datasets.index import load_split

        return len(load_split(resolve_paths(data_root), dataset, "train")), f"counted in {data_root}"
    if dataset in KNOWN_TRAIN_SIZES:
        return KNOWN_TRAIN_SIZES[dataset]
    return None, f"train size of {dataset} unknown: pass --train-size or --data-root"


class _Trainer:
    """One real training step on a fixed synthetic batch, with the pieces the profiler measures."""

    def __init__(self, model, optimizer, batch, amp: bool):
        self.model, self.optimizer, self.amp = model, optimizer, amp
        *self.inputs, self.box = batch
        self.device = self.box.device

    def forward_loss(self):
        from harness.losses import rec_loss

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pred = self.model(*self.inputs)
        return rec_loss(pred.float(), self.box)["loss"]

    def step(self, loss=None):
        loss = self.forward_loss() if loss is None else loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = _nbytes(p.grad for p in self.model.parameters() if p.grad is not None)
        self.optimizer.step()
        return grads

    def training_state(self) -> dict:
        """One step with every tensor autograd saves for backward recorded (the CPU memory proxy)."""
        own = {t.untyped_storage().data_ptr() for t in (*self.model.parameters(), *self.model.buffers())}
        saved: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in own and storage.nbytes():
                saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.forward_loss()
        grads = self.step(loss)
        state = [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        figures = {"saved_activations_bytes": sum(saved.values()), "saved_storages": len(saved),
                   "model_bytes": _nbytes(self.model.parameters()) + _nbytes(self.model.buffers()),
                   "grad_bytes": grads, "optimizer_state_bytes": _nbytes(state)}
        figures["training_state_bytes"] = sum(v for k, v in figures.items() if k.endswith("_bytes"))
        return figures

    def timed(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            _sync(self.device)
            t0 = time.perf_counter()
            self.step()
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return times


def _refuse_beyond_host_memory(model, optimizer, amp: bool, batch_size: int, seed: int) -> None:
    """A CPU training step keeps its activations in host memory: measure what one sample saves for backward and
    refuse, before the real batch, a batch whose activations alone would pass 80% of the machine's memory."""
    from harness.flops import synthetic_batch

    have = _physical_memory()
    if not have:
        return
    one = _Trainer(model, optimizer, synthetic_batch(model.config, 1, torch.device("cpu"), seed), amp).training_state()
    need = one["saved_activations_bytes"] * batch_size + one["training_state_bytes"] - one["saved_activations_bytes"]
    if need > 0.8 * have:
        raise HarnessError(f"a training step at batch {batch_size} keeps at least {need / 2**30:.1f} GiB in host "
                           f"memory (measured at batch 1 and scaled), more than 80% of this machine's "
                           f"{have / 2**30:.1f} GiB: "
                           "lower --batch-size or profile on a GPU")


def profile(method: str, preset: str = "tiny", batch_size: int | None = None, device: str = "auto",
            amp: bool = False, dataset: str = "unc", train_size: int | None = None, data_root=None,
            steps: int = 20, warmup: int = 5, output="results/profile", seed: int = 13, write: bool = True,
            runtime: str | None = None, frozen_chunk: int | None = None, flops: bool = True,
            method_overrides: dict | None = None, recipe_overrides: dict | None = None, tag: str | None = None,
            skip_done: bool = False) -> dict:
    from datasets.catalog import get_spec
    from harness.flops import forward_flops, synthetic_batch, train_step_flops
    from harness.model import build_model, count_parameters
    from harness.recipe import build_recipe
    from harness.device import resolve_device
    from harness.engine import build_optimizer, prepare_runtime, seed_everything
    from methods import apply_method, build_method, method_defaults

    if steps < 1 or warmup < 0:
        raise HarnessError(f"--steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
    dev = resolve_device(device)
    spec = get_spec(dataset)
    meth = build_method(method, method_overrides)
    recipe = build_recipe(preset, dataset, method_defaults(method)["recipe"], recipe_overrides,
                          {"batch_size": batch_size, "amp": amp or None, "runtime": runtime,
                           "frozen_chunk": frozen_chunk})
    if recipe.amp and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HarnessError("--amp uses bf16 autocast, which this GPU does not support: drop --amp")
    bs, precision = recipe.batch_size, precision_name(recipe.amp)
    size, size_source = train_size_for(dataset, train_size, data_root)
    name = record_name(method, preset, dev.type, precision, bs, recipe.runtime) + (f"_{tag}" if tag else "")
    identity = {"kind": "profile", "method": method, "method_config": asdict(meth.config), "preset": preset,
                "dataset": dataset, "device": dev.type, "precision": precision, "batch_size": bs,
                "runtime": recipe.runtime, "frozen_chunk": recipe.frozen_chunk, "recipe": asdict(recipe),
                "steps": steps, "warmup": warmup, "seed": seed, "flops": flops, "train_size": size}
    done = Path(output) / f"{name}.json"
    previous = records.up_to_date(done, records.config_hash(identity)) if skip_done and write else None
    if previous:
        print(f"{name}: up to date ({done}), skipped")
        previous["path"] = str(done)
        return previous

    seed_everything(seed)
    model = build_model(preset, max_query_len=spec.max_query_len)  # BERT vocabulary (30,522) by default
    apply_method(meth, model)
    params = count_parameters(model)
    fwd = forward_flops(model) if flops else None  # on CPU before the move: counts do not depend on the device
    prepare_runtime(model, recipe, dev)
    try:
        model.to(dev)
        step_flops = train_step_flops(model, bs, amp=recipe.amp) if flops else None
        if step_flops:
            step_flops["counted_on"] = dev.type
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # drop the FLOP count's cached blocks; warm-up rebuilds the training cache
        optimizer = build_optimizer(meth, model, recipe)
        model.train()
        if dev.type == "cpu" and bs > 1:
            _refuse_beyond_host_memory(model, optimizer, recipe.amp, bs, seed)
        trainer = _Trainer(model, optimizer, synthetic_batch(model.config, bs, dev, seed), recipe.amp)
        trainer.timed(warmup)
        proxy = trainer.training_state()  # not timed; creates the AdamW state if warm-up was 0
        if dev.type == "cuda":
            _sync(dev)
            baseline = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        times = trainer.timed(steps)
        if dev.type == "cuda":
            memory = {"device": "cuda", "primary": "peak_allocated_bytes",
                      "peak_allocated_bytes": torch.cuda.max_memory_allocated(dev),
                      "peak_reserved_bytes": torch.cuda.max_memory_reserved(dev),
                      "baseline_allocated_bytes": baseline, **proxy,
                      "what": f"torch.cuda.max_memory_allocated (primary) and max_memory_reserved over {steps} "
                              f"timed training steps after reset_peak_memory_stats, model + gradients + AdamW "
                              f"state included; baseline = allocated before the steps. Also stored: the "
                              f"device-independent proxy ({CPU_MEMORY_WHAT})"}
        else:
            memory = {"device": "cpu", "primary": "training_state_bytes", **proxy, "what": CPU_MEMORY_WHAT}
    except torch.OutOfMemoryError:
        raise HarnessError(f"out of GPU memory profiling {method} ({preset}) at batch size {bs}: "
                           "use a smaller --batch-size or --amp") from None

    median = statistics.median(times)
    steps_per_epoch = math.ceil(size / bs) if size else None
    time_fig = {
        "median_step_s": median, "p90_step_s": sorted(times)[min(len(times) - 1, int(0.9 * len(times)))],
        "mean_step_s": statistics.fmean(times), "timed_steps": steps, "warmup_steps": warmup,
        "samples_per_s": bs / median, "train_size": size, "train_size_source": size_source,
        "epoch_s": steps_per_epoch * median if size else None,
        "epoch_s_how": (f"extrapolated: ceil({size:,} / {bs}) = {steps_per_epoch:,} steps x median step of {steps} "
                        "timed steps; data loading and evaluation excluded") if size else None,
        "what": f"wall-clock per training step (forward, loss, backward, AdamW step) on one synthetic batch, "
                f"{'CUDA-synchronised, ' if dev.type == 'cuda' else ''}median over {steps} steps after "
                f"{warmup} warm-up steps",
    }
    env = records.environment(dev)
    env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    env["torch_threads"] = torch.get_num_threads()
    record = {
        "schema": records.SCHEMA_VERSION, "kind": "profile", "run_id": name, "method": method,
        "method_config": asdict(meth.config), "dataset": dataset,
        "dataset_label": f"synthetic tensors ({spec.label} shapes)", "data": "synthetic",
        "data_desc": {"inputs": "random tensors at the preset's shapes (full image, full-length query); "
                                "data content does not change these figures",
                      "image_size": model.config.image_size, "max_query_len": model.config.max_query_len,
                      "vocab_size": model.config.language.vocab_size},
        "preset": preset, "model_config": model.config.to_dict(), "recipe": asdict(recipe),
        "weights": {"vision": None, "language": None, "pretrained": False,
                    "note": "random init: weights do not change the figures"},
        "env": env, "device": dev.type, "device_name": env["device_name"], "precision": precision,
        "batch_size": bs, "image_size": model.config.image_size, "runtime": recipe.runtime,
        "overrides": {"method": method_overrides or {}, "recipe": recipe_overrides or {}}, "params": params,
        "flops": {"forward": fwd, "train_step": step_flops} if flops else {}, "memory": memory, "time": time_fig,
        "results": {}, "status": "ok", "error": None, "created_at": records.now(),
        "config_hash": records.config_hash(identity),
    }
    records.validate_record(record, name)
    if write:
        record["path"] = str(records.write_json_atomic(Path(output) / f"{name}.json", record))
    return record


def summary(record: dict) -> str:
    p, f, m, t = record["params"], record["flops"], record["memory"], record["time"]
    gb = m[m["primary"]] / 2**30
    mem = (f"peak allocated {gb:.2f} GiB (reserved {m['peak_reserved_bytes'] / 2**30:.2f} GiB)"
           if m["device"] == "cuda" else f"{gb:.3f} GiB (CPU proxy: saved activations + params + grads + AdamW)")
    epoch = (f"{t['epoch_s'] / 60:.1f} min (extrapolated, {t['train_size']:,} samples)" if t["epoch_s"]
             else f"- ({t['train_size_source']})")
    flops = (f"forward (batch 1): {f['forward']['gmacs']:.2f} GMACs = {f['forward']['gflops']:.2f} GFLOPs; "
             f"training step (batch {record['batch_size']}): {f['train_step']['tflops']:.4f} TFLOPs"
             if f else "FLOPs: not counted (--no-flops)")
    lines = [
        f"{record['method']} | preset {record['preset']} | {record['device_name']} | {record['precision']} | "
        f"{record['runtime']} runtime | batch {record['batch_size']} | {record['image_size']} px",
        f"params: tunable (encoder-side) {p['encoder_side_trainable'] / 1e6:.2f}M ({p['percent_encoder_side']:.2f}%)"
        f", all trainable {p['trainable'] / 1e6:.2f}M, total {p['total'] / 1e6:.2f}M",
        flops,
        f"memory: {mem}",
        f"step: median {t['median_step_s'] * 1000:.1f} ms over {t['timed_steps']} steps, "
        f"{t['samples_per_s']:.1f} samples/s; epoch: {epoch}",
    ]
    if record.get("path"):
        lines.append(f"record written to {record['path']}")
    return "\n".join(lines)


def loader_host_bytes(image_size: int, batch_size: int, num_workers: int) -> int:
    """Host memory the loader's batches take at once: a uint8 image and a bool mask per sample (normalised on the
    device), in each worker's two prefetched batches plus the one in the main process (decoded images and
    buffers come on top)."""
    per_sample = image_size * image_size * (3 + 1)
    return per_sample * batch_size * (2 * num_workers + 1)


def loader_throughput(preset: str = "paper", dataset: str = "unc", data_root=None, num_workers: int = 8,
                      batch_size: int = 64, batches: int = 30, warmup: int = 3, tokenizer=None,
                      coco_like: int | None = None) -> dict:
    """Samples/s the index loader delivers with training augmentation at the preset's image size (decoding,
    augmentation, tokenisation, collation; no model), so it can be set against a method's samples/s; and one
    worker's samples/s next to the decode-only floor on the same files (harness/loader_bench.py). `coco_like`:
    time that many generated COCO-like 640 x 480 JPEGs (made once, cached) instead of the data root."""
    from torch.utils.data import DataLoader

    from datasets.catalog import get_spec
    from datasets.rec import RECDataset, collate
    from datasets.tokenize import build_tokenizer
    from harness.model import get_config
    from harness.run import RunConfig, resolve_data

    if batch_size < 1 or num_workers < 0 or batches < 1:
        raise HarnessError(f"--batch-size and --steps must be >= 1 and --num-workers >= 0 (got {batch_size}, "
                           f"{batches}, {num_workers})")
    spec = get_spec(dataset)
    image_size = get_config(preset).image_size
    need, have = loader_host_bytes(image_size, batch_size, num_workers), _physical_memory()
    if have and need > 0.8 * have:
        raise HarnessError(f"batch {batch_size} x {num_workers} workers at {image_size} px keeps about "
                           f"{need / 2**30:.1f} GiB of batches in host memory, more than 80% of this machine's "
                           f"{have / 2**30:.1f} GiB: lower --batch-size or --num-workers")
    if coco_like is not None:
        from harness.loader_bench import coco_like_root
        from harness.device import DEFAULT_CACHE

        if dataset != "unc" or data_root is not None or coco_like < 1:
            raise HarnessError("--coco-like N (N >= 1) generates its own unc-style set: drop --data-root / --dataset")
        data_root = coco_like_root(DEFAULT_CACHE / f"coco-like-{coco_like}", coco_like)
        tokenizer = str(data_root / "vocab.txt")
    paths, tok_source, kind, _ = resolve_data(RunConfig(method="frozen", dataset=dataset, data_root=data_root,
                                                        tokenizer=tokenizer), 0)
    ds = RECDataset(paths, dataset, "train", build_tokenizer(tok_source), image_size, train=True,
                    max_query_len=spec.max_query_len, defer_jitter=torch.cuda.is_available())  # as a run would
    if len(ds) < batch_size:  # drop_last would leave no batch at all and the loop below would never end
        raise HarnessError(f"the train split of {dataset} has {len(ds)} samples, fewer than one batch of "
                           f"{batch_size}: lower --batch-size")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, collate_fn=collate,
                        drop_last=True, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    n, t0 = 0, None
    while n < warmup + batches:
        for _ in loader:
            n += 1
            if n == warmup:
                t0 = time.perf_counter()
            if n >= warmup + batches:
                break
    seconds = time.perf_counter() - t0
    from harness.loader_bench import per_worker

    return {"samples_per_s": batches * batch_size / seconds, "batches": batches, "batch_size": batch_size,
            "num_workers": num_workers, "image_size": image_size, "data": "coco-like JPEGs" if coco_like else kind,
            "dataset": dataset, "train_size": len(ds), "per_worker": per_worker(ds),
            "env": records.environment(torch.device("cpu")),
            "what": "training loader with augmentation, timed after warm-up batches"}
