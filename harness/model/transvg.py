"""TransVG: vision and language encoders -> projections -> [REG] + text + visual tokens -> V-L encoder
-> box MLP on [REG] -> sigmoid (cx, cy, w, h) normalised to the padded image.

Seams for methods (DESIGN.md): `set_trainable` by component, adapter slots and taps on every encoder
layer (transformer.py, language.py), `side` (a module adding a tensor to each branch's final features
before projection) and `encoders_need_grad` (False runs both encoders under torch.no_grad()).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from harness.model.config import ModelConfig
from harness.model.language import LanguageBranch
from harness.model.transformer import MLP, Encoder
from harness.model.vision import NEVER_TRAINED_PREFIXES, BranchOutput, VisionBranch

# Parameter-name prefixes of each component. Everything a method adds inside an encoder or as a side
# network counts as encoder-side (what REC PETL papers call tunable backbone parameters).
COMPONENTS = {
    "vision": ("visumodel.",),
    "language": ("textmodel.",),
    "side": ("side.",),
    "fusion": ("visu_proj.", "text_proj.", "reg_token.", "vl_pos_embed.", "vl_transformer."),
    "head": ("bbox_embed.",),
}
ENCODER_SIDE = ("vision", "language", "side")


def component_of(name: str) -> str:
    for component, prefixes in COMPONENTS.items():
        if name.startswith(prefixes):
            return component
    raise KeyError(f"parameter {name} belongs to no component")


class TransVG(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        d = cfg.fusion.d_model
        self.visumodel = VisionBranch(cfg.vision)
        self.textmodel = LanguageBranch(cfg.language)
        self.visu_proj = nn.Linear(cfg.vision.d_model, d)
        self.text_proj = nn.Linear(cfg.language.hidden, d)
        self.reg_token = nn.Embedding(1, d)
        self.vl_pos_embed = nn.Embedding(1 + cfg.max_query_len + cfg.visual_tokens, d)
        self.vl_transformer = Encoder(cfg.fusion.layers, d, cfg.fusion.heads, cfg.fusion.ffn, cfg.fusion.dropout)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.side: nn.Module | None = None
        self.encoders_need_grad = True
        # Frozen encoders may run in chunks of this many samples under no_grad: nothing of a frozen
        # forward is kept, so peak memory falls with the chunk while the numbers stay the same.
        self.frozen_chunk_size: int | None = None

    # ---- seams -------------------------------------------------------------------------------
    def set_trainable(self, components, trainable: bool = True):
        """Turn requires_grad on/off for whole components; DETR's never-trained stem/layer1 stay frozen."""
        components = {components} if isinstance(components, str) else set(components)
        for name, p in self.named_parameters():
            if component_of(name) in components:
                p.requires_grad_(trainable and not self.never_trained(name))

    @staticmethod
    def never_trained(name: str) -> bool:
        return name.startswith(tuple("visumodel." + p for p in NEVER_TRAINED_PREFIXES))

    def encoder_layers(self, branch: str):
        return self.visumodel.encoder.layers if branch == "vision" else self.textmodel.layers

    def set_eager_attention(self, eager: bool = True):
        """Explicit attention matmuls everywhere (for FLOP counting); numerically the same model."""
        for layer in list(self.visumodel.encoder.layers) + list(self.vl_transformer.layers):
            layer.eager_attention = eager
        self.textmodel.set_eager_attention(eager)

    # ---- forward -----------------------------------------------------------------------------
    def encode(self, image, image_mask, word_ids, word_mask):
        record = self.side is not None
        if self.encoders_need_grad:
            return (self.visumodel(image, image_mask, record), self.textmodel(word_ids, word_mask, record))
        with torch.no_grad():
            chunk = self.frozen_chunk_size or image.shape[0]
            parts = [(self.visumodel(image[i:i + chunk], image_mask[i:i + chunk], record),
                      self.textmodel(word_ids[i:i + chunk], word_mask[i:i + chunk], record))
                     for i in range(0, image.shape[0], chunk)]
        if len(parts) == 1:
            return parts[0]
        return _cat_branch([p[0] for p in parts]), _cat_branch([p[1] for p in parts])

    def forward(self, image, image_mask, word_ids, word_mask):
        vis, txt = self.encode(image, image_mask, word_ids, word_mask)
        v_feat, t_feat = vis.features, txt.features
        if self.side is not None:
            v_delta, t_delta = self.side(vis, txt)
            if v_delta is not None:
                v_feat = v_feat + v_delta
            if t_delta is not None:
                t_feat = t_feat + t_delta
        bsz = image.shape[0]
        tokens = torch.cat([self.reg_token.weight.expand(bsz, -1, -1), self.text_proj(t_feat),
                            self.visu_proj(v_feat)], dim=1)
        mask = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool, device=tokens.device), txt.mask, vis.mask], dim=1)
        pos = self.vl_pos_embed.weight.unsqueeze(0).expand(bsz, -1, -1)
        hs = self.vl_transformer(tokens, pos, mask)
        return self.bbox_embed(hs[:, 0]).sigmoid()


def _cat_branch(outs):
    taps = None
    if outs[0].taps is not None:
        taps = [{k: torch.cat([o.taps[i][k] for o in outs]) for k in outs[0].taps[i]} for i in range(len(outs[0].taps))]
    return BranchOutput(torch.cat([o.features for o in outs]), torch.cat([o.mask for o in outs]),
                        torch.cat([o.inputs for o in outs]), taps)
