"""UniPT: a parallel network per branch over the frozen encoders' layer outputs (no autograd in the encoders).

Paper: H. Diao, B. Wan, Y. Zhang, X. Jia, H. Lu, L. Chen, "UniPT: Universal Parallel Tuning for Transfer
Learning with Efficient Parameter and Memory", CVPR 2024 (arXiv 2308.14316). The released code
(github:Paranioar/UniPT @3fa457d) has two transformer instances; both are here (`instance`):

- `grounding` (default): the encoder-side module of UniPT's RefCOCO experiment on MDETR
  (MDETR/models/transformer.py L78-131, L134-166, L237-263). Of the hidden states [h_0 (input), h_1, ...,
  h_{N-1}] it reads `select_layers` ([1, 3, 5] for MDETR's 6 layers; the input h_0 is in the list but not
  selected), and the final output h_N as the anchor:
    A = LN(Linear(d -> m)(h_N)) (its own downsample), F_i = LN(Linear(d -> m)(h_i)) per selected layer;
    W_i = L1norm_rows(ReLU(A F_i^T (.) key mask)) + I (eps 1e-7), F'_i = W_i F_i;
    c_i = Linear(m -> 1)(masked_mean(A) (.) masked_mean(F_i)), softmax over the selected layers,
    F^c = sum_i c_i F'_i; S = A + MLP(F^c) with MLP = Linear(m -> 2m) -> ReLU -> Linear(2m -> m) -> LN(m);
    output LN(d)(Linear(m -> d)(ReLU(S))) (`side_final_upsample`);
  side weights (dim > 1) xavier-uniform, biases and LayerNorms PyTorch's defaults (L119-131).
- `vse`: the VSE-infinity instance (VSE-infty/lib/adapter_for_transformer.py): every hidden state h_0..h_{N-1}
  (the input included), the anchor's downsample is the last of the per-state list, projection Linear(m -> m)
  -> LN(m), output ReLU -> Linear(m -> d) without a final LN, L1 eps 1e-8, PyTorch default initialisation.

Why `grounding` is the default: it is what UniPT ran for REC, the task of this suite, on a DETR-style encoder
like TransVG's vision branch; `vse` is the instance for image-text retrieval.

Adapted to this model (TransVG; UniPT itself was shown on VSE-infinity, CLIP4Clip, CLIP-ViL and MDETR):
- one network per branch (MDETR runs one joint image+text encoder; TransVG has two), both encoders run under
  torch.no_grad() (`encoders_need_grad` False) and the networks read their recorded layer outputs, so no
  encoder activation is kept for backward: the method's memory saving;
- layer choice on other depths: `select_layers: null` takes every second layer output from h_1 below the
  anchor, {1, 3, ..., < N}: MDETR's [1, 3, 5] for the 6 DETR layers, [1, 3, 5, 7, 9, 11] for BERT's 12;
- MDETR's decoder-side module and its crosser have no counterpart (TransVG has no decoder). How a branch's
  output joins the model (`join`): in MDETR the side output REPLACES the frozen output (transformer.py L341,
  `hs = self.side_final_upsample(...)` takes the place of the decoder's hs; the frozen states enter only
  through the anchor and the selected layers), so `join: replace` (the default) hands each branch's UniPT
  output to visu_proj / text_proj in place of the branch's final features. `join: add` is the variant this
  project ran before fidelity round 3: the output is added to the frozen final features (the side seam as
  M2IST uses it), which at step 0 puts a unit-scale random correction (the output's LayerNorm) on top of
  every frozen feature;
- padding: the branch masks (True = pad) drive the masked means and zero the padded keys of the
  interaction, as UniPT's masks do; padded query rows are computed but never read by the fusion;
- widths: MDETR's rule m = d_model // 2 in both branches: 128 for vision (DETR d = 256) and 384 for language
  (BERT h = 768). With the grounding instance that gives 232,449 + 2,961,793 = 3,194,242 side parameters at
  the paper preset, M2IST's 3.19M budget. Widths scale with the branch width on other presets (tiny: 16 and
  32). `harness methods` gives the counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from harness.errors import HarnessError
from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import branch_width, scaled


INSTANCES = ("grounding", "vse")
JOINS = ("replace", "add")


def _masked_mean(x, valid):
    """Mean over tokens of x (B, N, m) where valid (B, N) is True."""
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def default_select_layers(num_layers: int) -> list[int]:
    """Every second layer output from h_1 below the anchor h_N: MDETR's [1, 3, 5] for 6 layers."""
    return list(range(1, num_layers, 2))


def _down(width: int, m: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, m), nn.LayerNorm(m))


class UniPTBranch(nn.Module):
    """UniPT's transformer module for one branch: hidden states [h_0 (input), h_1, ..., h_N (output)] of width
    `width` -> a (B, N_tokens, width) output (`join`: it replaces or corrects h_N). `instance` and the layer
    choice: see the module docstring."""

    def __init__(self, num_layers: int, width: int, m: int, instance: str = "grounding", select_layers=None):
        super().__init__()
        if instance not in INSTANCES:
            raise ValueError(f"instance must be one of {', '.join(INSTANCES)}, got {instance!r}")
        self.instance = instance
        if instance == "vse":  # h_0..h_{N-1} each with its own downsample, the last one also the anchor's
            self.select = list(range(num_layers))
            self.downsample = nn.ModuleList(_down(width, m) for _ in range(num_layers + 1))
            self.projection = nn.Sequential(nn.Linear(m, m), nn.LayerNorm(m))
            self.upsample = nn.Sequential(nn.ReLU(), nn.Linear(m, width))
            self.eps = 1e-8
        else:
            self.select = default_select_layers(num_layers) if select_layers is None else list(select_layers)
            if not self.select or any(not 0 <= i < num_layers for i in self.select):
                raise ValueError(f"select_layers must be a non-empty list of indices into [h_0 (input), h_1, ..., "
                                 f"h_{num_layers - 1}], got {self.select}")
            self.anchor_downsample = _down(width, m)
            self.downsample = nn.ModuleList(_down(width, m) for _ in self.select)
            self.projection = nn.Sequential(nn.Linear(m, 2 * m), nn.ReLU(), nn.Linear(2 * m, m), nn.LayerNorm(m))
            self.upsample = nn.Sequential(nn.ReLU(), nn.Linear(m, width), nn.LayerNorm(width))
            self.eps = 1e-7
        self.gate = nn.Linear(m, 1)
        if instance == "grounding":  # MDETR transformer.py L119-131: xavier on every side weight with dim > 1
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, states: list, pad_mask: torch.Tensor) -> torch.Tensor:
        """states: [h_0 (input), h_1, ..., h_N (final output)], each (B, N_tokens, width)."""
        valid = ~pad_mask
        key_mask = valid.unsqueeze(1).to(states[-1].dtype)  # (B, 1, N): padded keys get zero weight
        if self.instance == "vse":
            anchor, downs = self.downsample[-1](states[-1]), self.downsample[:-1]
        else:
            anchor, downs = self.anchor_downsample(states[-1]), self.downsample
        anchor_mean = _masked_mean(anchor, valid)
        eye = torch.eye(anchor.shape[1], device=anchor.device, dtype=anchor.dtype)
        merged, confidence = [], []
        for down, i in zip(downs, self.select):
            target = down(states[i])  # F_i
            weights = torch.relu(anchor @ target.transpose(1, 2) * key_mask)
            weights = weights / (weights.abs().sum(dim=-1, keepdim=True) + self.eps) + eye
            merged.append(weights @ target)  # F'_i
            confidence.append(self.gate(anchor_mean * _masked_mean(target, valid)))  # (B, 1)
        c = torch.softmax(torch.cat(confidence, dim=1), dim=1)  # over layers
        fused = (torch.stack(merged, dim=1) * c[:, :, None, None]).sum(dim=1)  # F^c
        return self.upsample(anchor + self.projection(fused))


class UniPTSide(nn.Module):
    """The model's side seam: side(vision_out, language_out) -> (vision output, language output), which replace
    the branches' final features or are added to them (`join`, read by TransVG.join)."""

    tap_names = {"vision": {"out"}, "language": {"out"}}  # layer outputs only (inputs come with the branch)

    def __init__(self, vision: UniPTBranch, language: UniPTBranch, join: str = "replace"):
        super().__init__()
        self.vision = vision
        self.language = language
        self.join = join

    @staticmethod
    def states(out) -> list:
        return [out.inputs] + [tap["out"] for tap in out.taps]

    def forward(self, vision_out, language_out):
        return (self.vision(self.states(vision_out), vision_out.mask),
                self.language(self.states(language_out), language_out.mask))


@dataclass
class UniPTConfig(MethodConfig):
    instance: str = "grounding"  # grounding (MDETR/RefCOCO) | vse (VSE-infinity); see the module docstring
    join: str = "replace"  # replace (MDETR transformer.py L341) | add (onto the frozen features); see the docstring
    width_vision: int = 128  # m at DETR d = 256 (d/2, UniPT's MDETR d_side); scaled on other presets
    width_language: int = 384  # m at BERT h = 768 (h/2, MDETR's d_model // 2 rule)
    # grounding only: indices into [h_0 (input), h_1, ...]; null = every second layer output from h_1
    select_layers_vision: Optional[list] = None
    select_layers_language: Optional[list] = None

    def __post_init__(self):
        if self.instance not in INSTANCES:
            raise ValueError(f"instance must be one of {', '.join(INSTANCES)}, got {self.instance!r}")
        if self.join not in JOINS:
            raise ValueError(f"join must be one of {', '.join(JOINS)}, got {self.join!r}")
        if min(self.width_vision, self.width_language) < 1:
            raise ValueError("UniPT widths must be positive")


@register
class UniPT(Method):
    name = "unipt"
    summary = "UniPT parallel networks over frozen layer outputs (MDETR grounding instance); no encoder autograd"
    Config = UniPTConfig

    @property
    def encoders_need_grad(self) -> bool:
        return False

    def apply(self, model) -> None:
        cfg, c = model.config, self.config
        freeze_encoders(model)
        branches = {}
        for branch, layers, m, select in (("vision", cfg.vision.layers, c.width_vision, c.select_layers_vision),
                                          ("language", cfg.language.layers, c.width_language,
                                           c.select_layers_language)):
            try:
                branches[branch] = UniPTBranch(layers, branch_width(cfg, branch), scaled(m, branch, cfg),
                                               c.instance, select)
            except ValueError as err:
                raise HarnessError(f"UniPT {branch}: {err} (preset '{cfg.name}' has {layers} layers)") from None
        device = next(model.visu_proj.parameters()).device
        model.side = UniPTSide(**branches, join=c.join).to(device)
