"""DARA: domain-aware adapters in both encoders and relation-aware adapters shared across them, inline.

Paper: T. Liu, X. Liu, S. Huang, H. Chen, Q. Yin, L. Qin, D. Wang, Y. Hu, "DARA: Domain- and Relation-aware
Adapters Make Parameter-efficient Tuning for Visual Grounding", ICME 2024 (arXiv 2405.06217). Released code on
TransVG-R50, the code base M2IST was forked from: github:liuting20/DARA @3e506f7 (model code unchanged since
ef8ef6b). Line numbers below are of that commit.

As the released code wires it (the default):
- DA (domain-aware adapter, models/adapter.py DA_Adapter_vis L93-157 / DA_Adapter_text L27-91):
  DA(H) = 0.1 * up(ReLU(down(LN(H)))), bottleneck 16, LayerNorm eps 1e-5, no residual inside (every call site
  keeps `add_residual=False`). It REPLACES the attention sub-layer's output: DETR layer (transformer.py L221-229)
  n1 = norm1(src + drop(DA(MHA(src)))); BERT layer (med.py BertSelfOutput L271-284) LN(DA(drop(dense(ctx))) + x).
  Every DETR layer has one (6 of 6, transformer.py L365-369); BERT layers i < 6 only (med.py L463-468).
- RA (relation-aware adapter, adapter.py RA_Adapter L7-24): one Linear 128 -> 256 per layer index, the SAME
  module object handed to DETR layer i and BERT layer i (DARA.py L28-34). DETR layer i reads its post-attention
  LN output n1 through its own down-projection 256 -> 128 + ReLU (`vis_downsample`, transformer.py L204-210)
  and adds RA(ReLU(down(n1))) to the FFN's residual sum, outside the dropout, before norm2 (L231-249):
  out = norm2(n1 + drop(FFN(n1)) + RA(...)). BERT layer i computes cat(text_upsample 128 -> 512,
  RA 128 -> 256) from ReLU(text_downsample(attention_output)) and DISCARDS it (med.py L420-426 put it in the
  layer's outputs tuple, BertEncoder.forward L547 keeps only layer_outputs[0]): the released text side of the
  RA has no effect on the boxes. So `text_relation: discarded` (default) builds no text RA path;
  `text_relation: added` is our variant of what the paper describes: the text path joins BERT layer i's FFN
  residual sum as the vision path does, reading the FFN input (the tensor the released code reads) with the
  RA weights shared with DETR layer i.
- initialisation, as the released construction order leaves it: DA_vis and vis_downsample weights
  xavier-uniform (DETR Transformer._reset_parameters over every matrix, transformer.py L49-57; the DETR
  checkpoint does not hold them), their biases U(0, 1) (adapter.py L127-132, L204-210); the RA and DA_text
  are submodules of the BERT layers, which transformers' from_pretrained re-initialises when the checkpoint
  lacks them (med.py L649-659): weights N(0, 0.02), biases zero, LayerNorms (1, 0).
- what trains (train.py L157-185): DA (its LayerNorm included), vis_downsample and the RA; everything else of
  both encoders frozen. Encoders run with autograd: the adapters sit inside the residual stream, so gradients
  cross the frozen layers (the memory cost M2IST's side form avoids).
- BERT embedding: DARA's BERT is BLIP's med.py (bert.py L15, L32), LN(word + position) with no token-type term,
  as M2IST (`token_type_embedding: false`, the same switch).
- rates (train.sh, README): AdamW; adapters at lr_visu_tra = lr_bert = 1e-5, the rest at 1e-4; weight decay 1e-4.

Counts at the paper preset: ours 610,752 encoder-side parameters (6 x (DA_vis 8,976 + vis_downsample 32,896 +
RA 33,024) + 6 x DA_text 26,896). The released code prints 1,600,704 (`requires_grad` in the encoders,
train.py L191): ours + 986,880 in text_downsample/text_upsample (trainable but discarded, so they never get a
gradient) + 3,072 in DA_vis's `adapter_layer_norm_cross_modal` (built, never called; adapter.py L112). The
paper's 2.13% of backbone parameters is not reproducible from this commit (its README says the released count is
lower than the paper's); the May-2024 adapter.py (a93c0f4, DA bottleneck 128) gives 2,978,304 / 140.76M = 2.12%.
`text_relation: added` counts 1,597,632. Widths scale with the branch width on other presets (tiny: DA 2 and 1,
RA space 16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import scaled

TEXT_RELATIONS = ("discarded", "added")


@dataclass
class DARAConfig(MethodConfig):
    bottleneck: int = 16  # DA, at DETR d 256 and BERT h 768 (adapter.py L27, L93 defaults); scaled per branch
    relation_dim: int = 128  # the RA's shared input space (DARA.py L29), at vision width 256
    scale: float = 0.1  # DA's adapter_scalar "0.1" (fixed)
    language_layers: Optional[int] = None  # adapted BERT layers from the first; None = the first half (med.py L464)
    text_relation: str = "discarded"  # see the module docstring
    token_type_embedding: bool = False  # BLIP's med.py embedding (no token-type term)

    def __post_init__(self):
        if min(self.bottleneck, self.relation_dim) < 1:
            raise ValueError("bottleneck and relation_dim must be positive")
        if self.text_relation not in TEXT_RELATIONS:
            raise ValueError(f"text_relation must be one of {', '.join(TEXT_RELATIONS)}, not {self.text_relation!r}")
        if self.language_layers is not None and self.language_layers < 0:
            raise ValueError("language_layers must be >= 0 (or null for the first half)")


class DomainAdapter(nn.Module):
    """DA_Adapter_vis / DA_Adapter_text: scale * up(ReLU(down(LN(H)))), put into an attention slot, whose output
    takes the place of the attention output H."""

    def __init__(self, width: int, bottleneck: int, scale: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)  # adapter_layer_norm_before: PyTorch's eps 1e-5, not BERT's 1e-12
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.scale = scale

    def forward(self, h, x=None):
        return self.scale * self.up(F.relu(self.down(self.norm(h))))


class RelationAdapter(nn.Module):
    """ReLU(down(X)) through the shared RA (and, on the text side, beside a private up-projection to fill the
    width: cat(private_up(z), RA(z)), med.py L421-426); a `parallel` seam module added to the FFN residual sum."""

    def __init__(self, down: nn.Linear, shared: nn.Linear, private_up: nn.Linear | None = None):
        super().__init__()
        self.down, self.shared, self.private_up = down, shared, private_up

    def forward(self, x):
        z = F.relu(self.down(x))
        out = self.shared(z)
        return out if self.private_up is None else torch.cat([self.private_up(z), out], -1)


def _released_init(module: nn.Module, how: str, std: float) -> None:
    """'detr': xavier-uniform weights, U(0, 1) biases; 'bert': N(0, std) weights, zero biases; LayerNorms (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if how == "detr":
                nn.init.xavier_uniform_(m.weight)
                nn.init.uniform_(m.bias)
            else:
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register
class DARA(Method):
    name = "dara"
    summary = "DARA: domain-aware adapters in both encoders, relation-aware adapters shared across them (inline)"
    Config = DARAConfig

    def apply(self, model) -> None:
        c, cfg = self.config, model.config
        d, h = cfg.vision.d_model, cfg.language.hidden
        vis_layers, txt_layers = list(model.encoder_layers("vision")), list(model.encoder_layers("language"))
        n_txt = max(1, len(txt_layers) // 2) if c.language_layers is None else c.language_layers
        if n_txt > len(txt_layers):
            raise HarnessError(f"DARA language_layers = {n_txt} but preset '{cfg.name}' has {len(txt_layers)} BERT "
                               "layers")
        if c.text_relation == "added" and (n_txt > len(vis_layers) or h <= d):
            raise HarnessError(f"DARA text_relation 'added' shares RA i between DETR layer i and BERT layer i and "
                               f"fills the width h - d with a private projection: it needs language_layers <= "
                               f"{len(vis_layers)} and h > d (preset '{cfg.name}': {n_txt}, h {h}, d {d})")
        freeze_encoders(model)
        model.textmodel.token_type_embedding = c.token_type_embedding
        std = model.textmodel.bert.config.initializer_range
        rel = scaled(c.relation_dim, "vision", cfg)
        ref = model.visu_proj.weight
        shared, added = [], []
        for layer in vis_layers:
            da = DomainAdapter(d, scaled(c.bottleneck, "vision", cfg), c.scale)
            down, ra = nn.Linear(d, rel), nn.Linear(rel, d)
            _released_init(da, "detr", std)
            _released_init(down, "detr", std)
            _released_init(ra, "bert", std)
            shared.append(ra)
            layer.attn_adapter, layer.ffn_parallel = da, RelationAdapter(down, ra)
            added += [layer.attn_adapter, layer.ffn_parallel]
        for i, layer in enumerate(txt_layers[:n_txt]):
            da = DomainAdapter(h, scaled(c.bottleneck, "language", cfg), c.scale)
            _released_init(da, "bert", std)
            layer.attention.output.adapter = da
            added.append(da)
            if c.text_relation == "added":
                parallel = RelationAdapter(nn.Linear(h, rel), shared[i], nn.Linear(rel, h - d))
                _released_init(parallel.down, "bert", std)
                _released_init(parallel.private_up, "bert", std)
                layer.output.parallel = parallel
                added.append(parallel)
        for module in added:
            module.to(device=ref.device, dtype=ref.dtype).requires_grad_(True)
