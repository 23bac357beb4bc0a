"""The training recipe (DESIGN.md, from the M2IST/TransVG code) and how overrides layer onto it:
preset recipe -> dataset schedule -> method YAML `recipe:` -> --config file `recipe:` -> CLI flags."""
from __future__ import annotations

from dataclasses import dataclass, replace

from harness.errors import HarnessError
from harness.options import check_values

RUNTIMES = ("optimized", "released")


@dataclass(frozen=True)
class Recipe:
    epochs: int = 90
    lr_drop: int = 60  # StepLR: x0.1 at this epoch
    batch_size: int = 64
    lr: float = 1e-4  # V-L fusion and head
    lr_encoder: float = 1e-5  # encoder-side parameters (full FT: backbone, DETR encoder, BERT; PETL modules)
    lr_scale: float = 1.0  # multiplies the rates of what starts from scratch (engine.build_optimizer); tiny only
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.0  # 0 = no clipping (TransVG/M2IST default)
    amp: bool = False  # bf16 autocast; the paper trains in fp32
    seed: int = 13
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    num_workers: int = 4
    eval_every: int = 1  # epochs between validations (best checkpoint is chosen on val, as TransVG)
    augment: bool = True
    # Loss = l1_weight x L1 + giou_weight x GIoU on normalised cxcywh (TransVG: 1 and 1; DETR's box terms: 5 and 2)
    l1_weight: float = 1.0
    giou_weight: float = 1.0
    # Runtime settings; the numerics are the same up to float rounding, TF32 aside (engine.prepare_runtime):
    # - `runtime: released` = the released TransVG/M2IST code's measurement conditions (the paper's Fig. 1):
    #   attention through nn.MultiheadAttention with need_weights=True and BERT's explicit attention (both keep
    #   the N x N attention maps for backward), no BatchNorm folding, no channels-last, no cuDNN autotuning, and
    #   TF32 matmuls on CUDA (torch 1.7's default, the code's pin; every record's env.tf32 says what ran);
    # - `runtime: optimized` = frozen BatchNorms folded into their convolutions, fused attention kernels (SDPA),
    #   channels-last convolutions, and cuDNN autotuning on CUDA;
    # - `frozen_chunk`: frozen encoders run without autograd in chunks of this many samples (None = whole batch);
    # - `checkpoint_fusion`: activation checkpointing of the V-L fusion, one segment per layer: each layer keeps only
    #   its input for backward and recomputes the rest (dropout masks replayed), trading compute for memory.
    runtime: str = "optimized"
    frozen_chunk: int | None = None
    checkpoint_fusion: bool = False


RECIPES = {
    "paper": Recipe(),
    # Toy schedule for the tiny preset on synthetic data (minutes per run on 2 CPU cores), and what differs from the
    # paper recipe, each for a measured reason (issue 28; results/benchmarks/fusion_levers_v1.json, where the V-L fusion
    # is trained alone on cached features of the frozen stand-in encoders):
    # - what starts from scratch (fusion, head, a method's modules) learns at 10x the method's rates to fit the
    #   short schedule; the encoders' own weights keep the method's rate (engine.build_optimizer);
    # - the box loss takes DETR's weights (L1 x5, GIoU x2; TransVG: 1 and 1): on the toy the fusion's plateau is box
    #   precision more than finding the object, and the heavier L1 term leaves it sooner (3 seeds: 31/25/29 val
    #   Acc@0.5 after 64k samples against 32/13/15);
    # - 50 epochs (~6,500 steps of batch 32) with the drop at 40, so that a run that leaves the plateau late still
    #   converges; val every 2nd epoch (the best checkpoint is chosen among those): a val split large enough for a
    #   <= 1-point binomial error (~3,000 expressions) costs ~9 s of forward passes against ~17 s of training in a
    #   frozen epoch (estimated from results/benchmarks/step_breakdown.json).
    "tiny": Recipe(epochs=50, lr_drop=40, batch_size=32, lr_scale=10.0, num_workers=0, eval_every=2,
                   l1_weight=5.0, giou_weight=2.0),
}
# TransVG/M2IST README: RefCOCO+ trains 180 epochs with the drop at 120.
DATASET_SCHEDULES = {"unc+": {"epochs": 180, "lr_drop": 120}}


def build_recipe(preset: str, dataset: str, *overrides: dict) -> Recipe:
    recipe = RECIPES["paper" if preset == "paper" else "tiny"]
    if preset == "paper":
        recipe = replace(recipe, **DATASET_SCHEDULES.get(dataset, {}))
    for layer in overrides:
        if layer is not None and not isinstance(layer, dict):
            raise HarnessError(f"a recipe section must be a mapping of option: value, got {layer!r}")
        recipe = replace(recipe, **check_values(Recipe, {k: v for k, v in (layer or {}).items() if v is not None},
                                                "recipe"))
    if recipe.runtime not in RUNTIMES:
        raise HarnessError(f"recipe option runtime must be one of {', '.join(RUNTIMES)}, got {recipe.runtime!r}")
    for key, ok, rule in (("epochs", recipe.epochs >= 1, ">= 1"), ("batch_size", recipe.batch_size >= 1, ">= 1"),
                          ("lr_drop", recipe.lr_drop >= 1, ">= 1 (StepLR's step)"),
                          ("eval_every", recipe.eval_every >= 1, ">= 1"), ("lr", recipe.lr > 0, "> 0"),
                          ("lr_encoder", recipe.lr_encoder >= 0, ">= 0"), ("lr_scale", recipe.lr_scale > 0, "> 0"),
                          ("weight_decay", recipe.weight_decay >= 0, ">= 0"),
                          ("l1_weight", recipe.l1_weight >= 0, ">= 0"), ("giou_weight", recipe.giou_weight >= 0, ">= 0"),
                          ("clip_max_norm", recipe.clip_max_norm >= 0, ">= 0 (0 = no clipping)"),
                          ("num_workers", recipe.num_workers >= 0, ">= 0"),
                          ("frozen_chunk", recipe.frozen_chunk is None or recipe.frozen_chunk >= 1,
                           ">= 1, or null for the whole batch"),
                          ("max_steps", recipe.max_steps is None or recipe.max_steps >= 1, ">= 1 (--max-steps)")):
        if not ok:
            raise HarnessError(f"recipe option {key} must be {rule}, got {getattr(recipe, key)!r}")
    return recipe
