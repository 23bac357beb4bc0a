"""The training engine, as DETR's engine.py: one epoch of TransVG's step (AdamW over the method's parameter groups,
L1 + GIoU, optional bf16 autocast and gradient clipping), timed step by step, and what it runs with: the runtime
settings, the optimizer, the loaders, the seeds. harness/run.py drives it epoch by epoch and evaluates
(harness/evaluate.py); the loop can be read and profiled here alone.
"""
from __future__ import annotations

import math
import random
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from datasets.rec import collate
from datasets.transforms import model_inputs
from harness.errors import HarnessError
from harness.losses import rec_loss
from harness.recipe import Recipe

WARMUP_STEPS = 5  # excluded from the step-time median and the memory peak


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch



def prepare_runtime(model, recipe: Recipe, device: torch.device) -> None:
    """The recipe's runtime settings (runtime, frozen_chunk, checkpoint_fusion), after the method is applied."""
    if recipe.runtime == "optimized":
        # channels-last on CPU too: oneDNN's convolutions skip a layout reorder per call (tiny unc, one thread,
        # A/B in one process, median of 40 steps: frozen 105 -> 88 ms, m2ist 135 -> 118, full 165 -> 139)
        model.optimize_for_training(channels_last=True)
    else:  # released: explicit attention that keeps its N x N maps, as nn.MultiheadAttention(need_weights=True)
        model.set_eager_attention(True)
    if device.type == "cuda":  # fixed input shapes: pick the fastest convolution once (not in the released code)
        torch.backends.cudnn.benchmark = recipe.runtime == "optimized"
    # TF32 matmuls: the released code pins torch 1.7, where `matmul.allow_tf32` defaulted to True (1.7-1.11), so its
    # fp32 step times on Ampere and later were measured with TF32 matmuls; torch >= 1.12 defaults to False, which the
    # optimized runtime keeps (full fp32 matmuls). cuDNN's TF32 convolutions default to True in every version.
    torch.backends.cuda.matmul.allow_tf32 = recipe.runtime == "released"
    model.frozen_chunk_size = recipe.frozen_chunk
    model.vl_transformer.checkpoint_layers = recipe.checkpoint_fusion



def build_optimizer(method, model, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over the method's parameter groups. The recipe's `lr_scale` (the tiny recipe's short schedule)
    multiplies only what starts from scratch; the encoders' own weights keep the method's rate, since at 10x
    that rate full fine-tuning overwrites the pretrained encoders and never leaves the fusion's plateau
    (unc val Acc@0.5 0.05 after 30 tiny epochs, against 0.29 at the unscaled rate)."""
    groups = method.param_groups(model, recipe.lr, recipe.lr_encoder)
    for group in groups:
        if group["scratch"]:
            group["lr"] *= recipe.lr_scale
    return torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)



def build_loader(dataset, batch_size: int, train: bool, recipe: Recipe, rank: int, world: int, epoch_gen=None):
    if world > 1:
        sampler = (DistributedSampler(dataset, world, rank, shuffle=True, seed=recipe.seed) if train
                   else list(range(rank, len(dataset), world)))  # eval: shard without padding duplicates
    else:
        sampler = RandomSampler(dataset, generator=epoch_gen) if train else None
    # TransVG/M2IST train.py: drop_last=True for the train split (no partial last step), never for evaluation
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=recipe.num_workers, drop_last=train,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())



def train_one_epoch(train_model, loader, optimizer, recipe: Recipe, state: dict, device, world: int, run_id: str,
                    show: bool = True) -> list[float]:
    """One pass over `loader` (stopping early at the recipe's max_steps); the step count and the per-step times
    (after WARMUP_STEPS) go into `state`; returns the step losses."""
    is_cuda = device.type == "cuda"
    trainable = [p for p in train_model.parameters() if p.requires_grad]
    train_model.train()
    losses, t_prev = [], time.perf_counter()
    bar = tqdm(loader, desc=f"{run_id} epoch {state['epoch'] + 1}/{recipe.epochs}", disable=None if show else True,
               leave=False, dynamic_ncols=True)
    for batch in bar:
        t0 = time.perf_counter()
        batch = model_inputs(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.amp):
            pred = train_model(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"])
        loss = rec_loss(pred.float(), batch["box"], recipe.l1_weight, recipe.giou_weight)
        optimizer.zero_grad(set_to_none=True)
        loss["loss"].backward()
        if recipe.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, recipe.clip_max_norm)
        optimizer.step()
        value = loss["loss"].item()  # also synchronises the device before the clock is read
        t1 = time.perf_counter()
        if not math.isfinite(value):
            raise HarnessError(f"{run_id}: the training loss is {value} at step {state['step'] + 1} (epoch "
                               f"{state['epoch'] + 1}): training diverged; lower lr / lr_encoder or set clip_max_norm")
        dt, t_iter, t_prev = t1 - t0, t1 - t_prev, t1
        state["step"] += 1
        if state["step"] > WARMUP_STEPS:
            state["step_times"].append(dt)
            state["iteration_times"].append(t_iter)
        elif state["step"] == WARMUP_STEPS and is_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        losses.append(value)
        bar.set_postfix(loss=f"{value:.3f}", samples_s=f"{len(pred) * world / dt:.1f}")
        if max_steps_reached(state, recipe):
            break
    bar.close()
    return losses



def max_steps_reached(state, recipe) -> bool:
    return recipe.max_steps is not None and state["step"] >= recipe.max_steps



def memory_figures(device, state) -> dict:
    if device.type == "cuda":
        return {"device": "cuda", "peak_allocated_bytes": state.get("peak_allocated"),
                "peak_reserved_bytes": state.get("peak_reserved"),
                "what": f"torch.cuda.max_memory_allocated/reserved over training steps after {WARMUP_STEPS} warm-up steps"}
    import resource

    return {"device": "cpu", "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "what": "CPU run: process peak resident memory (model, data pipeline, activations), "
                    "not comparable to GPU allocator peaks; see `harness profile` for training-memory figures"}



def time_figures(state, recipe: Recipe, train_size: int) -> dict:
    times, iterations = state["step_times"], state["iteration_times"]
    median = statistics.median(times) if times else None
    median_iteration = statistics.median(iterations) if iterations else None
    full_epochs = [t for t in state["epoch_times"]] if recipe.max_steps is None else []
    return {
        "median_step_s": median, "timed_steps": len(times), "warmup_steps": WARMUP_STEPS,
        "median_iteration_s": median_iteration,
        "what": "step = batch on the device to optimizer step done (synchronised by loss.item()); iteration = "
                "the same plus waiting for the data loader, i.e. what a training step costs through the harness",
        "samples_per_s": recipe.batch_size / median_iteration if median_iteration else None,
        "epoch_s": statistics.median(full_epochs) if full_epochs else None,
        "epoch_s_how": "measured (median over epochs, data loading included)" if full_epochs else None,
        "train_seconds": sum(state["epoch_times"]), "train_size": train_size,
    }
