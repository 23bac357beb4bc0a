"""UniPT: a parallel network per branch over the frozen encoders' layer outputs (no autograd in the encoders).

Paper: H. Diao, B. Wan, Y. Zhang, X. Jia, H. Lu, L. Chen, "UniPT: Universal Parallel Tuning for Transfer
Learning with Efficient Parameter and Memory", CVPR 2024 (arXiv 2308.14316); the module follows the
official transformer variant (github:Paranioar/UniPT, VSE-infty/lib/adapter_for_transformer.py). For the
hidden states h_0..h_N of a frozen encoder (h_0 its input, h_N its output):
1. F_i = LN(Linear(d -> m)(h_i)) for every i (one projection per layer);
2. anchor F_N and its masked mean a;
3. parallel interaction (no parameters), for i < N: W_i = L1norm_rows(ReLU(F_N F_i^T (.) key mask)) + I,
   F'_i = W_i F_i;
4. confidence aggregation: c_i = Linear(m -> 1)(a (.) masked_mean(F_i)), softmax over the N layers,
   F^c = sum_i c_i F'_i; output ReLU(F_N + LN(Linear(m -> m)(F^c))) -> Linear(m -> d).

Adapted to this model (TransVG; UniPT itself was shown on VSE-infinity, CLIP4Clip, CLIP-ViL and MDETR):
- one such network per branch, both encoders run under torch.no_grad() (`encoders_need_grad` False) and
  the networks read their recorded taps, so no encoder activation is kept for backward: the method's
  memory saving. Vision: the DETR encoder input (input_proj(C5) flattened, no position embedding) and the
  6 layer outputs (7 states at the paper preset); language: the BERT embedding output and the 12 layer
  outputs (13, as HF's output_hidden_states);
- the output enters through the model's side seam, i.e. it is ADDED to the branch's final features before
  visu_proj / text_proj (UniPT's VSE and MDETR instances replace the features with it; here the frozen
  features stay and the network learns a correction, the same seam M2IST uses);
- padding: the branch masks (True = pad) drive the masked means and zero the padded keys of the
  interaction, as UniPT's length masks do; padded query rows are computed but never read by the fusion;
- widths: m = d/2 = 128 for vision (UniPT's MDETR instance uses d_side = d_model // 2 = 128 with DETR
  d = 256); m = 256 for language (= h/3; chosen for a budget comparable to the other baselines and to
  M2IST's 3.19M, and equal to the fusion width 256; UniPT's VSE uses m = embed/2). At the paper preset:
  281,985 (vision) + 2,829,825 (language) = 3,111,810 side parameters; m_language = 128 gives 1,680,898.
  Widths scale with the branch width on other presets (tiny: 16 and 21);
- initialisation: PyTorch defaults, as the official code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import branch_width, scaled


def _masked_mean(x, valid):
    """Mean over tokens of x (B, N, m) where valid (B, N) is True."""
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class UniPTBranch(nn.Module):
    """UniPT's transformer module for one branch: `num_states` hidden states of width `width` -> a (B, N,
    width) correction."""

    def __init__(self, num_states: int, width: int, m: int, eps: float = 1e-8):
        super().__init__()
        if num_states < 2:
            raise ValueError("UniPT needs at least the encoder input and one layer output")
        self.downsample = nn.ModuleList(nn.Sequential(nn.Linear(width, m), nn.LayerNorm(m)) for _ in range(num_states))
        self.gate = nn.Linear(m, 1)
        self.projection = nn.Sequential(nn.Linear(m, m), nn.LayerNorm(m))
        self.upsample = nn.Sequential(nn.ReLU(), nn.Linear(m, width))
        self.eps = eps

    def forward(self, states: list, pad_mask: torch.Tensor) -> torch.Tensor:
        if len(states) != len(self.downsample):
            raise ValueError(f"UniPT branch built for {len(self.downsample)} hidden states, got {len(states)}")
        valid = ~pad_mask
        key_mask = valid.unsqueeze(1).to(states[-1].dtype)  # (B, 1, N): padded keys get zero weight
        anchor = self.downsample[-1](states[-1])  # F_N (B, N, m)
        anchor_mean = _masked_mean(anchor, valid)
        eye = torch.eye(anchor.shape[1], device=anchor.device, dtype=anchor.dtype)
        merged, confidence = [], []
        for down, h in zip(self.downsample[:-1], states[:-1]):
            target = down(h)  # F_i
            weights = torch.relu(anchor @ target.transpose(1, 2) * key_mask)
            weights = weights / (weights.abs().sum(dim=-1, keepdim=True) + self.eps) + eye
            merged.append(weights @ target)  # F'_i
            confidence.append(self.gate(anchor_mean * _masked_mean(target, valid)))  # (B, 1)
        c = torch.softmax(torch.cat(confidence, dim=1), dim=1)  # over layers
        fused = (torch.stack(merged, dim=1) * c[:, :, None, None]).sum(dim=1)  # F^c
        return self.upsample(anchor + self.projection(fused))


class UniPTSide(nn.Module):
    """The model's side seam: side(vision_out, language_out) -> (vision delta, language delta)."""

    tap_names = {"vision": {"out"}, "language": {"out"}}  # layer outputs only (inputs come with the branch)

    def __init__(self, vision: UniPTBranch, language: UniPTBranch):
        super().__init__()
        self.vision = vision
        self.language = language

    @staticmethod
    def states(out) -> list:
        return [out.inputs] + [tap["out"] for tap in out.taps]

    def forward(self, vision_out, language_out):
        return (self.vision(self.states(vision_out), vision_out.mask),
                self.language(self.states(language_out), language_out.mask))


@dataclass
class UniPTConfig(MethodConfig):
    width_vision: int = 128  # m at DETR d = 256 (d/2, UniPT's MDETR d_side); scaled on other presets
    width_language: int = 256  # m at BERT h = 768 (budget choice, see the module docstring)

    def __post_init__(self):
        if min(self.width_vision, self.width_language) < 1:
            raise ValueError("UniPT widths must be positive")


@register
class UniPT(Method):
    name = "unipt"
    summary = "UniPT parallel networks over all frozen layer outputs; encoders without autograd"
    Config = UniPTConfig

    @property
    def encoders_need_grad(self) -> bool:
        return False

    def apply(self, model) -> None:
        cfg, c = model.config, self.config
        freeze_encoders(model)
        branches = {}
        for branch, layers, m in (("vision", cfg.vision.layers, c.width_vision),
                                  ("language", cfg.language.layers, c.width_language)):
            branches[branch] = UniPTBranch(layers + 1, branch_width(cfg, branch), scaled(m, branch, cfg))
        device = next(model.visu_proj.parameters()).device
        model.side = UniPTSide(**branches).to(device)
