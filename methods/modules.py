"""Building blocks shared by the inline baselines (`adapter`, `vlpet`) and the width rule every baseline uses.

- `scaled(dim, branch, config)`: method dimensions are given for the `paper` preset (DETR d = 256, BERT
  h = 768) and scaled in proportion to the branch width for other presets (tiny: d = 32, h = 64), at least 1.
- `Bottleneck`: H -> H + s * up(act(down(H))), the sequential bottleneck adapter (Houlsby et al. 2019;
  AdaptFormer, Chen et al. 2022). `adapter` uses it as is; VL-PET uses it for its modification
  H + dH before the gate.
- `install_slot_modules(model, factory)`: puts one module into every adapter slot of both encoders (after
  the attention and the FFN sub-layer of every DETR encoder layer and every BERT layer). A slot module is
  called as f(H, X) with H the sub-layer output and X the sub-layer input; the layer then applies dropout,
  the residual add and the (post-)LayerNorm: out = LN(X + drop(f(H, X))).
"""
from __future__ import annotations

import math

from torch import nn

from harness.model import PRESETS

BRANCHES = ("vision", "language")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


def branch_width(config, branch: str) -> int:
    """Token width of a branch's encoder: DETR d_model (vision) or BERT hidden size (language)."""
    return config.vision.d_model if branch == "vision" else config.language.hidden


def scaled(dim_at_paper: int, branch: str, config) -> int:
    """A dimension given for the paper preset, scaled by width / paper width (rounded, at least 1)."""
    paper = branch_width(PRESETS["paper"], branch)
    return max(1, round(dim_at_paper * branch_width(config, branch) / paper))


class Bottleneck(nn.Module):
    """H + scale * up(act(down(H))); `init`: "zero_up" = AdaptFormer (down kaiming-uniform a=sqrt(5) as
    nn.Linear, both biases zero, up all zero: the identity at initialisation), "normal" = N(0, std) weights
    and zero biases (what BART's / BERT's `_init_weights` gives a module created inside the model)."""

    def __init__(self, width: int, bottleneck: int, activation: str = "relu", scale: float = 1.0,
                 init: str = "zero_up", std: float = 0.02):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        self.scale = scale
        if init == "zero_up":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif init == "normal":
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
        else:
            raise ValueError(f"init must be 'zero_up' or 'normal', not {init!r}")

    def delta(self, h):
        return self.up(self.act(self.down(h)))

    def forward(self, h, x=None):
        return h + self.scale * self.delta(h)


def slot_sites(model):
    """(branch, layer index, sub-layer kind, owner module, slot attribute) for every adapter slot of both
    encoders: DETR layers carry `attn_adapter` / `ffn_adapter`, BERT layers carry `adapter` on
    `attention.output` (attention sub-layer) and on `output` (FFN sub-layer)."""
    for i, layer in enumerate(model.encoder_layers("vision")):
        yield "vision", i, "attn", layer, "attn_adapter"
        yield "vision", i, "ffn", layer, "ffn_adapter"
    for i, layer in enumerate(model.encoder_layers("language")):
        yield "language", i, "attn", layer.attention.output, "adapter"
        yield "language", i, "ffn", layer.output, "adapter"


def install_slot_modules(model, factory) -> None:
    """factory(branch, width) -> module, put into every slot on the device of the layer it joins."""
    for branch, _, _, owner, attr in slot_sites(model):
        if getattr(owner, attr) is not None:
            raise ValueError(f"an adapter slot of the {branch} encoder is already taken: apply one inline "
                             f"method per model")
        module = factory(branch, branch_width(model.config, branch))
        device = next(owner.parameters()).device
        setattr(owner, attr, module.to(device))


def slot_layer_norms(model):
    """The post-norm LayerNorms that close each slotted sub-layer: DETR norm1/norm2, BERT
    attention.output.LayerNorm / output.LayerNorm (not the embedding LayerNorm)."""
    for layer in model.encoder_layers("vision"):
        yield layer.norm1
        yield layer.norm2
    for layer in model.encoder_layers("language"):
        yield layer.attention.output.LayerNorm
        yield layer.output.LayerNorm
