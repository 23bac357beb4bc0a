"""One run = one method on one dataset, ending in one run record (`harness run`), as DETR's main.py: the
configuration, the data, the model with its weights and method, the run's lock, resuming from its last checkpoint,
the final evaluation on every split and the record. The epochs themselves are harness/engine.py's.

Data flows one way: datasets -> this module -> engine -> method/model -> evaluate -> record. The loop is
TransVG's: AdamW with the method's parameter groups, StepLR, L1 + GIoU, optional bf16 autocast and gradient
clipping, a checkpoint per epoch, the best checkpoint chosen on val. Every epoch reseeds all RNGs from
(seed, epoch), so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
Multi-GPU: launch with torchrun (see README); ranks share the sampler and all-reduce the metrics.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from datasets.catalog import get_spec, resolve_paths
from datasets.files import check_writable
from datasets.rec import RECDataset
from datasets.synth import DEFAULT_IMAGES as SYNTH_DEFAULT_IMAGES
from datasets.synth import ensure_synthetic
from datasets.tokenize import build_tokenizer
from harness import records
from harness import device as _device
from harness.device import resolve_device
from harness.errors import HarnessError
from harness.engine import (build_loader, build_optimizer, epoch_seed, max_steps_reached, memory_figures,
                            prepare_runtime, seed_everything, time_figures, train_one_epoch)
from harness.evaluate import evaluate
from harness.flops import forward_flops, train_step_flops
from harness.locks import FolderLock
from harness.model import build_model, count_parameters, get_config
from harness.model.weights import (state_dict_of, load_language_weights, load_vision_weights,
                                   load_whole_model_state, read_checkpoint)
from harness.pretrain import PretrainConfig, ensure_pretrained, weights_source
from harness.recipe import build_recipe
from methods import apply_method, build_method, method_defaults

SYNTH_SEED = 13


@dataclass
class RunConfig:
    method: str
    dataset: str
    preset: str = "tiny"
    data_root: str | None = None  # None: the synthetic set, generated once into the cache
    split_root: str | None = None
    image_root: str | None = None
    image_dirs: dict | None = None
    tokenizer: str | None = None  # default: the language weights' folder, else bert-base-uncased
    vision_weights: str | None = None
    language_weights: str | None = None
    init_checkpoint: str | None = None  # a whole model: TransVG's checkpoint layout or one of ours (no method modules)
    method_overrides: dict = field(default_factory=dict)
    recipe_overrides: dict = field(default_factory=dict)
    set_overrides: dict = field(default_factory=dict)  # what --set gave (also in method/recipe_overrides), recorded
    device: str = "auto"
    output: str = "results/runs"
    work_dir: str = "runs"
    tag: str | None = None
    restart: bool = False  # discard the run's checkpoints (saying so) instead of resuming from them
    skip_done: bool = False  # return the existing record if it is ok and has this configuration
    reuse: str | None = None  # a folder of run records: one of this exact configuration is copied, not retrained
    cache_dir: str | None = None
    synthetic_images: int | None = None  # size of the synthetic set (None: the generator's default)
    # With no weights given, the tiny preset on synthetic data starts from the stand-in pretrained encoders
    # (`harness pretrain`, made once and cached) instead of random ones: PETL on random features measures nothing.
    stand_in_encoders: bool = False
    trust_pickles: bool = False  # allow files that only the full (unsafe) unpickler reads (datasets/safe_load.py)

    @property
    def run_id(self) -> str:
        return "_".join(p for p in (self.dataset.replace("+", "plus"), self.method, self.preset, self.tag) if p)


# ---- setup -------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def vocab_size_for(preset: str, tokenizer) -> int:
    """tiny sizes BERT's embedding to the tokenizer; paper keeps BERT-base's 30,522 rows (so the model and
    its counts are TransVG's) unless the tokenizer is larger."""
    from harness.model import PRESETS

    return max(len(tokenizer), PRESETS[preset].language.vocab_size) if preset == "paper" else len(tokenizer)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank0_first(make, rank: int):
    """`make()` on rank 0, then on the other ranks: rank 0 fills a cache (data, pretrained encoders) that the
    others then only read."""
    if rank == 0:
        result = make()
    barrier()
    return result if rank == 0 else make()


def synthetic_root(cache_dir=None, images: int = SYNTH_DEFAULT_IMAGES) -> Path:
    """The synthetic set used when no data root is given, generated once into the cache."""
    return ensure_synthetic(Path(cache_dir) if cache_dir else _device.DEFAULT_CACHE, seed=SYNTH_SEED, images=images)


def resolve_data(cfg: RunConfig, rank: int):
    """(paths, tokenizer source, data kind, data description) for the run."""
    if cfg.data_root is None:
        images = cfg.synthetic_images or SYNTH_DEFAULT_IMAGES
        root = rank0_first(lambda: synthetic_root(cfg.cache_dir, images), rank)
        return resolve_paths(root), str(root / "vocab.txt"), "synthetic", {"seed": SYNTH_SEED, "images": images}
    paths = resolve_paths(cfg.data_root, cfg.split_root, cfg.image_root, cfg.image_dirs, cfg.trust_pickles)
    scenes = Path(cfg.data_root) / "scenes.json"
    if scenes.is_file():  # a synthetic set `harness data synth` wrote: never recorded as real data
        try:
            meta = json.loads(scenes.read_text())
            desc = {"seed": meta["seed"], "images": meta["images_per_name"], "root": str(cfg.data_root)}
        except (ValueError, KeyError, TypeError):
            raise HarnessError(f"{scenes} marks {cfg.data_root} as a synthetic set but is unreadable: regenerate it "
                               "with `harness data synth`") from None
        return paths, cfg.tokenizer or str(Path(cfg.data_root) / "vocab.txt"), "synthetic", desc
    tokenizer = cfg.tokenizer or cfg.language_weights or "bert-base-uncased"
    return paths, tokenizer, "real", {"root": str(cfg.data_root)}


def with_stand_in_encoders(cfg: RunConfig, data_kind: str, rank: int) -> RunConfig:
    if not (cfg.stand_in_encoders and cfg.preset == "tiny" and data_kind == "synthetic"
            and cfg.vision_weights is None and cfg.language_weights is None and cfg.init_checkpoint is None):
        return cfg
    log = (lambda msg: None) if rank else print
    root, _ = rank0_first(lambda: ensure_pretrained(PretrainConfig(preset="tiny"), cache_dir=cfg.cache_dir, log=log),
                          rank)
    if rank == 0:
        print(f"encoders: the tiny stand-in pretraining in {root} (harness pretrain; --random-init for random ones)")
    return replace(cfg, vision_weights=str(root / "vision.pth"), language_weights=str(root / "bert"))


def check_before_training(train_set, eval_sets: dict, folders) -> None:
    """What would otherwise fail after the last epoch: an empty eval split, an eval image that is missing or
    unreadable or smaller than its box, a train image that is missing, a folder that cannot be written."""
    for split, dataset in eval_sets.items():
        if len(dataset) == 0:
            raise HarnessError(f"the {split} split of {dataset.name} is empty: nothing to score; fix the index "
                               "(`harness data check`)")
        dataset.check_images(open_images=True)
    train_set.check_images(open_images=False)
    for folder in folders:
        check_writable(folder, "choose another --output / --work-dir or free space")


# ---- checkpoints ---------------------------------------------------------------------------------


def save_atomic(obj, path: Path) -> None:
    records.write_atomic(path, lambda tmp: torch.save(obj, tmp))


# ---- the run ------------------------------------------------------------------------------------


def run(cfg: RunConfig) -> dict:
    rank, world = init_distributed()
    device = resolve_device(cfg.device)
    spec = get_spec(cfg.dataset)
    method = build_method(cfg.method, cfg.method_overrides)
    with torch.device("meta"):  # a method that cannot apply to this preset (a LoRA target, a layer count) fails now
        apply_method(method, build_model(cfg.preset))
    recipe = build_recipe(cfg.preset, cfg.dataset, method_defaults(cfg.method)["recipe"], cfg.recipe_overrides)
    if recipe.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HarnessError("--amp uses bf16 autocast, which this GPU does not support: drop --amp")
    paths, tok_source, data_kind, data_desc = resolve_data(cfg, rank)
    tokenizer = build_tokenizer(tok_source)
    cfg = with_stand_in_encoders(cfg, data_kind, rank)
    # records keep paths relative to the repository or the cache, never this machine's layout (checkpoints, which
    # stay on this machine, keep them as they are)
    portable_desc = {k: records.portable(v) if k == "root" else v for k, v in data_desc.items()}

    identity = {
        "method": cfg.method, "method_config": asdict(method.config), "dataset": cfg.dataset, "preset": cfg.preset,
        "recipe": asdict(recipe), "data": data_kind, "data_desc": portable_desc,
        "tokenizer": records.portable(tok_source) if data_kind == "real" else "synthetic vocab.txt",
        "weights": {"vision": records.portable(cfg.vision_weights), "language": records.portable(cfg.language_weights)},
        "world_size": world,
    }
    if cfg.init_checkpoint:  # only where given, so that records written before it existed keep their hash
        identity["weights"]["init_checkpoint"] = records.portable(cfg.init_checkpoint)
    chash = records.config_hash(identity)
    run_dir = Path(cfg.work_dir) / cfg.run_id
    done = Path(cfg.output) / f"{cfg.run_id}.json"
    previous = records.up_to_date(done, chash) if cfg.skip_done else None
    if previous:
        if rank == 0:
            print(f"{cfg.run_id}: up to date ({done}), skipped")
        return previous
    if cfg.reuse:
        reused = _reused_record(cfg, chash, done, rank)
        if reused:
            return reused

    with RunLock(run_dir, rank):  # held until the record is written
        image_size = get_config(cfg.preset).image_size  # the data is checked before the model is built
        # a synthetic set is small and, with no workers, read in this process all run long: decode it once
        cache = data_kind == "synthetic" and recipe.num_workers == 0
        train_set = RECDataset(paths, cfg.dataset, "train", tokenizer, image_size, train=True,
                               augment=recipe.augment, max_query_len=spec.max_query_len,
                               defer_jitter=device.type == "cuda", cache_images=cache)
        eval_sets = {s: RECDataset(paths, cfg.dataset, s, tokenizer, image_size, train=False,
                                   max_query_len=spec.max_query_len, cache_images=cache) for s in spec.eval_splits}
        if rank == 0:
            check_before_training(train_set, eval_sets, [Path(cfg.output), run_dir])
        if len(train_set) < recipe.batch_size * world:
            raise HarnessError(f"the train split of {cfg.dataset} under {paths.split_root} has {len(train_set)} "
                               f"samples, fewer than one batch of {recipe.batch_size * world} (the last partial batch "
                               "is dropped, as TransVG): lower --batch-size")
        seed_everything(recipe.seed)
        model = build_model(cfg.preset, max_query_len=spec.max_query_len,
                            vocab_size=vocab_size_for(cfg.preset, tokenizer))
        load_reports = []
        if cfg.init_checkpoint:
            ckpt = read_checkpoint(cfg.init_checkpoint, cfg.trust_pickles)
            load_reports.append(load_whole_model_state(model, state_dict_of(ckpt, cfg.init_checkpoint),
                                                       str(cfg.init_checkpoint)))
        if cfg.vision_weights:
            load_reports.append(load_vision_weights(model, cfg.vision_weights, cfg.trust_pickles))
        if cfg.language_weights:
            load_reports.append(load_language_weights(model, cfg.language_weights))
        if rank == 0:
            for report in load_reports:
                print(report.summary())
        apply_method(method, model)
        params = count_parameters(model)
        prepare_runtime(model, recipe, device)
        flops = {"forward": forward_flops(model)} if rank == 0 else {}  # counted on CPU: device-independent
        model.to(device)
        if rank == 0:
            flops["train_step"] = train_step_flops(model, recipe.batch_size, amp=recipe.amp)


        optimizer = build_optimizer(method, model, recipe)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, recipe.lr_drop, gamma=0.1)
        train_model = model
        if world > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        state = _start_state(cfg, model, optimizer, scheduler, run_dir, chash, rank)
        meta = {"method": cfg.method, "method_config": asdict(method.config), "model_config": model.config.to_dict(),
                "preset": cfg.preset, "dataset": cfg.dataset, "tokenizer": tok_source, "data": data_kind,
                "data_desc": data_desc}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # the code this process imported: a commit made while it trains must not be named as what ran
        env = records.environment(device)

        def make_record(status: str, results: dict, error: str | None = None) -> dict:
            return {
                "schema": records.SCHEMA_VERSION, "kind": "run", "run_id": cfg.run_id, "method": cfg.method,
                "method_config": asdict(method.config), "dataset": cfg.dataset,
                "dataset_label": spec.label if data_kind == "real" else f"synthetic ({spec.label}-style)",
                "data": data_kind, "data_desc": portable_desc, "preset": cfg.preset,
                "model_config": model.config.to_dict(), "recipe": asdict(recipe), "config_hash": chash,
                "overrides": cfg.set_overrides,
                "weights": {"vision": records.portable(cfg.vision_weights),
                            "language": records.portable(cfg.language_weights),
                            "init_checkpoint": records.portable(cfg.init_checkpoint),
                            "pretrained": bool(cfg.vision_weights or cfg.language_weights or cfg.init_checkpoint),
                            "source": weights_source(cfg.vision_weights, cfg.language_weights),
                            "loaded": [records.portable_text(r.summary()) for r in load_reports]},
                "env": env, "world_size": world, "params": params, "flops": flops,
                "memory": memory_figures(device, state), "time": time_figures(state, recipe, len(train_set)),
                "results": results, "train": {k: state[k] for k in ("epoch", "step", "best", "history")},
                "status": status, "error": error, "created_at": records.now(),
            }

        try:
            try:
                _train_loop(cfg, train_model, model, train_set, eval_sets, optimizer, scheduler, recipe, state,
                            device, rank, world, run_dir, chash, meta)
            except torch.OutOfMemoryError:
                raise HarnessError(f"out of GPU memory at batch size {recipe.batch_size}: lower --batch-size, "
                                   "use --amp, or use fewer GPUs' worth of batch per device") from None
            best = run_dir / "best.pth"
            if best.exists():
                ckpt = read_checkpoint(best, cfg.trust_pickles)
                if ckpt.get("config_hash") != chash:
                    raise HarnessError(f"{best} is not this run's best checkpoint (another configuration wrote it):"
                                       " rerun with --restart")
                model.load_state_dict(ckpt["model"])
            results = {}
            for split, dataset in eval_sets.items():
                loader = build_loader(dataset, recipe.batch_size, False, recipe, rank, world)
                results[split] = evaluate(model, loader, device, recipe.amp)
        except BaseException as err:  # a record of what happened (suites report from it), then the error goes on
            if rank == 0:
                status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                records.write_json_atomic(Path(cfg.output) / f"{cfg.run_id}.json",
                                          make_record(status, {}, f"{why} (after epoch {state['epoch']})"))
            raise
        record = make_record("ok", results)
        if rank == 0:
            path = records.write_json_atomic(Path(cfg.output) / f"{cfg.run_id}.json", record)
            print(f"record written to {path}")
        return record


def _reused_record(cfg: RunConfig, chash: str, done: Path, rank: int) -> dict | None:
    """A finished record of this exact configuration (the same config hash: method, recipe with seed, data,
    weights) from the folder `cfg.reuse`, written as this run's record: the sweep's grid point at a method's
    published rate is the default suite's run, and training it again would only repeat it. The copy keeps what the
    original measured and where (env, time, created_at) and names it in `reused_from`; only the run id and the
    overrides that asked for it are this run's."""
    if not Path(cfg.reuse).is_dir():
        raise HarnessError(f"--reuse {cfg.reuse}: no such folder of run records (drop --reuse to train the run)")
    for path in sorted(Path(cfg.reuse).glob("*.json")):
        source = records.up_to_date(path, chash)
        if source and source["kind"] == "run" and path.resolve() != done.resolve():
            record = {**source, "run_id": cfg.run_id, "overrides": cfg.set_overrides,
                      "reused_from": records.portable(path)}
            if rank == 0:
                records.write_json_atomic(done, record)
                print(f"{cfg.run_id}: the same configuration as {path} (--reuse): its record copied to {done}")
            return record
    return None


def RunLock(run_dir: Path, rank: int = 0) -> FolderLock:
    """An exclusive lock on a run folder for the whole run (rank 0): a second run with the same run id refuses in
    one line instead of deleting or overwriting the first one's checkpoints."""
    return FolderLock(run_dir, "run.lock", lambda pid: f"{run_dir} is in use by another run (pid {pid}): wait for it "
                      "to end, or give this one another --tag or --work-dir", active=rank == 0)


def _fresh_state() -> dict:
    return {"epoch": 0, "step": 0, "best": {"accuracy": -1.0, "epoch": None}, "history": [], "step_times": [],
            "iteration_times": [], "epoch_times": []}


def _start_state(cfg, model, optimizer, scheduler, run_dir: Path, chash: str, rank: int) -> dict:
    """Where training starts: the run's own last checkpoint if there is one (an interrupted run resumes by
    default), else epoch 0. Checkpoints are deleted only by --restart, or under --skip-done when they belong to
    an older configuration, and each deletion is said."""
    state = _fresh_state()
    last, best = run_dir / "last.pth", run_dir / "best.pth"
    say = print if rank == 0 else (lambda *a: None)
    ckpt = None
    if last.exists() and not cfg.restart:
        try:
            ckpt = read_checkpoint(last, cfg.trust_pickles)
        except HarnessError as err:
            raise HarnessError(f"{err}; pass --restart to discard it and start at epoch 1") from None
        if not isinstance(ckpt, dict):
            raise HarnessError(f"{last} holds a {type(ckpt).__name__}, not a checkpoint of `harness run`: pass "
                               "--restart to discard it and start at epoch 1")
        if ckpt.get("config_hash") != chash:
            if not cfg.skip_done:
                raise HarnessError(f"{last} belongs to a run with another configuration: pass --restart to delete "
                                   "it and start over, or give this run another --tag or --work-dir")
            # --skip-done brings the record up to date: a checkpoint of an older configuration is stale
            say(f"{cfg.run_id}: {last} is from another configuration (--skip-done): deleting it, starting afresh")
            ckpt = None
    stale = [p for p in (last, best) if p.exists()]
    if ckpt is None and stale and rank == 0:
        if cfg.restart:
            say(f"{cfg.run_id}: --restart: deleting {', '.join(map(str, stale))}")
        for p in stale:  # a fresh run must never pick up an older run's files
            p.unlink()
    if ckpt is not None:
        try:  # a file with this run's hash but damaged inside (a missing entry, wrong shapes, a malformed state)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            state = ckpt["state"]
            if not isinstance(state, dict) or any(type(state.get(k)) is not type(v) for k, v in _fresh_state().items()):
                raise ValueError("its training state is malformed")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            why = (str(err).strip().splitlines() or [""])[0][:160]
            raise HarnessError(f"{last} cannot be resumed ({type(err).__name__}: {why}): pass --restart to discard it "
                               "and start at epoch 1") from None
        say(f"resuming {cfg.run_id} after epoch {state['epoch']} (step {state['step']}) from {last} "
            "(--restart to start over)")
    return state


def _train_loop(cfg, train_model, model, train_set, eval_sets, optimizer, scheduler, recipe, state, device,
                rank, world, run_dir, chash, meta):
    """Epochs until the recipe's end: each reseeds every RNG from (seed, epoch), trains one epoch (engine),
    steps the schedule, evaluates val every `eval_every` epochs (the best checkpoint follows it) and saves last.pth."""
    val_split = next(iter(eval_sets))
    while state["epoch"] < recipe.epochs and not max_steps_reached(state, recipe):
        epoch = state["epoch"]
        seed_everything(epoch_seed(recipe.seed, epoch))
        gen = torch.Generator().manual_seed(epoch_seed(recipe.seed, epoch))
        loader = build_loader(train_set, recipe.batch_size, True, recipe, rank, world, gen)
        if world > 1:
            loader.sampler.set_epoch(epoch)
        t_epoch = time.perf_counter()
        losses = train_one_epoch(train_model, loader, optimizer, recipe, state, device, world, cfg.run_id, rank == 0)
        state["epoch_times"].append(time.perf_counter() - t_epoch)
        if device.type == "cuda":
            state["peak_allocated"] = max(state.get("peak_allocated", 0), torch.cuda.max_memory_allocated(device))
            state["peak_reserved"] = max(state.get("peak_reserved", 0), torch.cuda.max_memory_reserved(device))
        scheduler.step()
        state["epoch"] += 1
        entry = {"epoch": state["epoch"], "loss": statistics.fmean(losses), "lr": scheduler.get_last_lr()}
        last_epoch = state["epoch"] >= recipe.epochs or max_steps_reached(state, recipe)
        if state["epoch"] % recipe.eval_every == 0 or last_epoch:
            val = evaluate(model, build_loader(eval_sets[val_split], recipe.batch_size, False, recipe, rank, world),
                           device, recipe.amp)
            entry["val_accuracy"] = val["accuracy"]
            if val["accuracy"] > state["best"]["accuracy"] and rank == 0:
                state["best"] = {"accuracy": val["accuracy"], "epoch": state["epoch"]}
                save_atomic({"model": model.state_dict(), "meta": meta, "config_hash": chash}, run_dir / "best.pth")
        state["history"].append(entry)
        if rank == 0:
            print(f"{cfg.run_id} epoch {state['epoch']}/{recipe.epochs}: loss {entry['loss']:.4f}"
                  + (f", val Acc@0.5 {entry['val_accuracy']:.4f}" if "val_accuracy" in entry else ""), flush=True)
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "state": state, "meta": meta, "config_hash": chash},
                        run_dir / "last.pth")
        barrier()
