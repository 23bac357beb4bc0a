"""Adapter-tuning: sequential bottleneck adapters inside both frozen encoders.

Paper: N. Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (placement: one
adapter after the attention and one after the FFN sub-layer of every layer, inside the residual, before
the LayerNorm), with AdaptFormer's module and init (S. Chen et al., "AdaptFormer: Adapting Vision
Transformers for Scalable Visual Recognition", NeurIPS 2022: down -> ReLU -> up, down kaiming-uniform, up
and biases zero). The M2IST paper (arXiv 2407.01131, Fig. 1) reports an "Adapter-tuning" row on this
TransVG-R50 model with 3.27M tunable parameters; neither its configuration nor its code is published (no REC
repository we know of ships an Adapter baseline), so this is our reading of Houlsby et al.

Adapted to this model:
- every layer of both encoders (6 DETR layers, d = 256; 12 BERT layers, h = 768) gets two adapters through
  the model's slots: H' = H + s * up(ReLU(down(H))) on the sub-layer output H, then the layer's own
  dropout, residual add and post-LayerNorm (Houlsby's position for a post-norm transformer). adapter-bert
  (@1a31fc6 modeling.py L943-946, L962-965) applies the dropout first, so its adapter reads dropout(H):
  LN(A(drop(H)) + X); here it is LN(drop(A(H)) + X): the same function in eval mode and at dropout 0, another
  noise pattern in training (the slot seam hands the adapter H before the layer's own dropout);
- the up-projection is zero-initialised (AdaptFormer), so the tuned model equals the frozen one at step 0;
  s = 1 (Houlsby's sequential adapter has no scale; AdaptFormer's 0.1 belongs to its parallel form);
- bottleneck 64 in both branches at the paper preset (BERT 768 -> 64, DETR 256 -> 64): 2,776,320 adapter
  parameters (2,820,864 encoder-side with the LayerNorms), comparable to M2IST's 3.19M and the 3.27M
  "Adapter-tuning" row; scaled with the branch width on other presets (tiny: 5 and 8);
- LayerNorms: Houlsby's released code trains every LayerNorm of the network (adapter-bert @1a31fc6,
  optimization.py L71-73 trains the "adapters", "layer_norm" and "head" collections; modeling.py puts every
  layer_norm, the embeddings' included, into "layer_norm"). `train_layer_norms: true` (default) does the same
  here: DETR norm1/norm2 and BERT's attention/output LayerNorms of every layer plus its embedding LayerNorm
  (44,544 parameters at the paper preset, counted as tunable). `false` freezes them (the encoders' weights
  stay untouched, as in LoRA); the option has VL-PET's name for the same switch;
- everything else in the encoders frozen, V-L fusion and box head trainable; gradients flow through the
  frozen encoders to the adapters, so the encoders run with autograd (no memory saving, as in the paper's
  comparison).
"""
from __future__ import annotations

from dataclasses import dataclass

from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import ACTIVATIONS, Bottleneck, install_slot_modules, scaled, slot_layer_norms


@dataclass
class AdapterConfig(MethodConfig):
    bottleneck_vision: int = 64  # at DETR d = 256; scaled with the width on other presets
    bottleneck_language: int = 64  # at BERT h = 768
    activation: str = "relu"
    scale: float = 1.0
    init: str = "zero_up"  # "zero_up" (AdaptFormer, identity at init) or "normal" (N(0, 0.02))
    train_layer_norms: bool = True  # Houlsby: every LayerNorm of the encoders trains (see the module docstring)

    def __post_init__(self):
        if min(self.bottleneck_vision, self.bottleneck_language) < 1:
            raise ValueError("bottleneck sizes must be positive")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        if self.init not in ("zero_up", "normal"):
            raise ValueError(f"init must be 'zero_up' or 'normal', not {self.init!r}")


@register
class AdapterTuning(Method):
    name = "adapter"
    summary = "bottleneck adapters after attention and FFN in both encoders, LayerNorms train (Houlsby)"
    Config = AdapterConfig

    def apply(self, model) -> None:
        c = self.config
        freeze_encoders(model)
        sizes = {"vision": c.bottleneck_vision, "language": c.bottleneck_language}
        install_slot_modules(model, lambda branch, width: Bottleneck(
            width, scaled(sizes[branch], branch, model.config), activation=c.activation, scale=c.scale,
            init=c.init))
        if c.train_layer_norms:
            for norm in (*slot_layer_norms(model), model.textmodel.bert.embeddings.LayerNorm):
                norm.requires_grad_(True)
