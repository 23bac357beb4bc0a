"""VL-PET-style granularity-controlled modules in both frozen encoders.

Paper: Z.-Y. Hu, Y. Li, M. R. Lyu, L. Wang, "VL-PET: Vision-and-Language Parameter-Efficient Tuning via
Granularity Control", ICCV 2023 (arXiv 2308.09804; code github:HenryHZY/VL-PET, whose BART encoder layer
this follows where figure and code differ). Its encoder module acts on a sub-layer (self-attention or
FFN) with input X and output H:

    out = LN(X + drop(s * G (.) (H + dH))),   dH = up(GELU(down(H)))

with a granularity-controlled gate G (code semantics):
- large (default, the paper's best): G = sigmoid(up_g(GELU(down_g(X)))), per token and channel (N x d);
- middleX: G = sigmoid(w . (X + H + dH)), one value per token (N x 1);
- middleY: G = 1 + z, z in R^d trainable (the code has no sigmoid, unlike the paper's figure);
- small: G = mean over tokens of sigmoid(w . [X ; H + dH]), one value per example (the code's mean runs
  over every token, padding included, and so does this one).
GELU is the tanh form (`gelu_new`). N_h = 4 heads of Linear(d, r / N_h) concatenated before the
non-linearity are one Linear(d, r) (same function, count and init distribution), so dH uses one Linear.
As `--unfreeze_encoder_layer_norms`, the encoder LayerNorms train too.

Adapted to this model (TransVG has two frozen post-norm encoders and no decoder):
- the module sits after the attention and after the FFN sub-layer of every layer of both encoders
  (6 DETR layers, X = src without position embedding, H = self_attn output / linear2 output; 12 BERT
  layers, H = attention.output.dense / output.dense), through the model's adapter slots. The slot returns
  s * G (.) (H + dH) and the layer applies dropout, the residual add and its LayerNorm, which is VL-PET's
  order (gate, dropout, residual, LayerNorm);
- trainable LayerNorms: DETR norm1/norm2 and the two LayerNorms of each BERT layer. (VL-PET's name match
  `encoder.` + `layernorm` also catches BART's embedding LayerNorm; BERT's embedding LayerNorm stays
  frozen here.)
- VL-PET's decoder module (a value-parallel adapter on cross-attention, no gate) has no counterpart:
  TransVG has no decoder or cross-attention, and its V-L fusion transformer trains fully, as in every
  method of this suite;
- rank: VL-PET uses r = r_g = 96 = d/8 at d = 768. Default here is budget-matched, r = r_g = 32 in both
  branches at the paper preset: 2,434,560 (BERT) + 406,272 (DETR) = 2,840,832 encoder-side parameters incl.
  LayerNorms, comparable to M2IST's 3.19M. The paper's d/8 rule is the option rank_language: 96,
  rank_vision: 32 (7,562,496). Ranks scale with the branch width on other presets (tiny: 3 and 4);
- init: default = BART recipe (VL-PET's BART runs): s = 1.0, every new Linear N(0, 0.02) with zero bias, z
  N(0, 0.02). Option init: zero + scale: 0.3 = T5 recipe (zero up-projection of dH and zero last layer of
  the gate). G_large is NOT the identity at init: sigmoid(~0) ~ 0.5 roughly halves each sub-layer output
  at step 0 (s * 0.5 exactly with zero init). Only middleY with init: zero and s = 1 is the identity.
- gradients flow through the frozen encoders, so the encoders run with autograd.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import Bottleneck, install_slot_modules, scaled, slot_layer_norms

GATES = ("large", "middleX", "middleY", "small")
INITS = ("bart", "zero")


class VLPETModule(nn.Module):
    """f(H, X) = s * G (.) (H + dH) for one sub-layer; the layer adds dropout, residual and LayerNorm."""

    def __init__(self, width: int, rank: int, gate: str = "large", scale: float = 1.0, init: str = "bart",
                 std: float = 0.02):
        super().__init__()
        self.gate_kind, self.scale = gate, scale
        self.modification = Bottleneck(width, rank, activation="gelu_tanh", init="normal", std=std)
        if gate == "large":
            self.gate = nn.Sequential(nn.Linear(width, rank), nn.GELU(approximate="tanh"), nn.Linear(rank, width))
        elif gate in ("middleX", "small"):
            self.gate = nn.Linear(width if gate == "middleX" else 2 * width, 1)
        elif gate == "middleY":
            self.gate = nn.Parameter(torch.empty(width))
        else:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, not {gate!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
        if isinstance(self.gate, nn.Parameter):  # z; zero (VL-PET's middle_ia3_zero_init) makes G = 1
            if init == "zero":
                nn.init.zeros_(self.gate)
            else:
                nn.init.normal_(self.gate, std=std)
        else:
            linears = [m for m in self.gate.modules() if isinstance(m, nn.Linear)]
            for m in linears:
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            if init == "zero":  # the gate's last layer at zero (VL-PET's *_up_zero_init): G = sigmoid(0) = 0.5
                nn.init.zeros_(linears[-1].weight)
        if init == "zero":  # --use_encoder_multihead_up_zero_init: dH = 0 at init (biases are zero already)
            nn.init.zeros_(self.modification.up.weight)

    def forward(self, h, x):
        h = self.modification(h)  # H + dH
        if self.gate_kind == "large":
            out = h * torch.sigmoid(self.gate(x))
        elif self.gate_kind == "middleX":
            out = h * torch.sigmoid(self.gate(x + h))
        elif self.gate_kind == "middleY":
            out = h + h * self.gate
        else:  # small
            out = h * torch.sigmoid(self.gate(torch.cat([x, h], dim=-1))).mean(dim=1, keepdim=True)
        return out * self.scale


@dataclass
class VLPETConfig(MethodConfig):
    gate: str = "large"  # large | middleX | middleY | small
    rank_vision: int = 32  # r = r_g at DETR d = 256; scaled with the width on other presets
    rank_language: int = 32  # r = r_g at BERT h = 768 (VL-PET's own d/8 = 96)
    scale: float = 1.0  # s; the T5 recipe uses 0.3 with init: zero
    init: str = "bart"  # bart: N(0, 0.02) everywhere; zero: zero up-projection of dH and of the gate
    train_layer_norms: bool = True  # VL-PET's --unfreeze_encoder_layer_norms

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, not {self.gate!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if min(self.rank_vision, self.rank_language) < 1:
            raise ValueError("ranks must be positive")


@register
class VLPET(Method):
    name = "vlpet"
    summary = "VL-PET-style gated modules after attention and FFN in both encoders; encoder LNs train"
    Config = VLPETConfig

    def apply(self, model) -> None:
        c = self.config
        freeze_encoders(model)
        ranks = {"vision": c.rank_vision, "language": c.rank_language}
        install_slot_modules(model, lambda branch, width: VLPETModule(
            width, scaled(ranks[branch], branch, model.config), gate=c.gate, scale=c.scale, init=c.init))
        if c.train_layer_norms:
            for norm in slot_layer_norms(model):
                norm.requires_grad_(True)
