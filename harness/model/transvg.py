"""TransVG: vision and language encoders -> projections -> [REG] + text + visual tokens -> V-L encoder
-> box MLP on [REG] -> sigmoid (cx, cy, w, h) normalised to the padded image.

Seams for methods (DESIGN.md): `set_trainable` by component, adapter slots and taps on every encoder
layer (transformer.py, language.py), `side` (a module whose output is added to each branch's final features
before projection, or takes their place when the module's `join` is "replace") and `encoders_need_grad` (False
runs both encoders under torch.no_grad()).
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext
from itertools import chain

import torch
from torch import nn

from harness.model.config import ModelConfig
from harness.model.language import LanguageBranch
from harness.model.transformer import MLP, TAP_NAMES, Encoder
from harness.model.vision import NEVER_TRAINED_PREFIXES, VisionBranch

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
        if cfg.fusion.pos_embed_std is not None:
            nn.init.normal_(self.vl_pos_embed.weight, std=cfg.fusion.pos_embed_std)
        self.vl_transformer = Encoder(cfg.fusion.layers, d, cfg.fusion.heads, cfg.fusion.ffn, cfg.fusion.dropout,
                                      cfg.fusion.normalize_before, cfg.fusion.final_norm)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.side: nn.Module | None = None
        self.encoders_need_grad = True
        # The encoders' own weights (what DETR/BERT checkpoints fill), kept by identity: methods later insert
        # modules into the encoders, wrap their layers and fold their BatchNorms, so names do not tell.
        self._encoder_weights = {id(p): weakref.ref(p)
                                 for p in chain(self.visumodel.parameters(), self.textmodel.parameters())}
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

    def is_encoder_weight(self, p: torch.Tensor) -> bool:
        """True for a weight the encoders were built with; False for what a method inserted or attached."""
        ref = self._encoder_weights.get(id(p))
        return ref is not None and ref() is p

    @staticmethod
    def never_trained(name: str) -> bool:
        return name.startswith(tuple("visumodel." + p for p in NEVER_TRAINED_PREFIXES))

    def encoder_layers(self, branch: str):
        return self.visumodel.encoder.layers if branch == "vision" else self.textmodel.layers

    def set_eager_attention(self, eager: bool = True):
        """Explicit attention matmuls everywhere, keeping the attention maps for backward (FLOP counting; the
        released runtime); the same function up to float rounding."""
        for layer in list(self.visumodel.encoder.layers) + list(self.vl_transformer.layers):
            layer.eager_attention = eager
        self.textmodel.set_eager_attention(eager)
        if hasattr(self.side, "set_eager_attention"):  # a side network with attention layers of its own (LST)
            self.side.set_eager_attention(eager)

    def optimize_for_training(self, channels_last: bool = False) -> None:
        """Speed-ups that keep the function (up to float rounding): fold the frozen BatchNorms into their
        convolutions (also removes bf16 autocast's promotion of activations to fp32 by the fp32 BN buffers),
        and optionally channels-last convolutions (faster on GPUs, and with oneDNN on CPUs). State dicts are
        unchanged."""
        self.visumodel.fold_batchnorm()
        self.visumodel.channels_last = channels_last
        if channels_last:
            self.visumodel.backbone.to(memory_format=torch.channels_last)

    # ---- forward -----------------------------------------------------------------------------
    def tap_names(self) -> dict:
        """Taps to record per branch: what the side network asks for (its `tap_names`), all of them if it
        does not say, none without a side network."""
        if self.side is None:
            return {"vision": None, "language": None}
        wanted = getattr(self.side, "tap_names", None) or {}
        return {b: set(wanted.get(b, TAP_NAMES)) for b in ("vision", "language")}

    def encode(self, image, image_mask, word_ids, word_mask):
        """Both branches' outputs, under torch.no_grad() when the encoders need no autograd."""
        names = self.tap_names()
        with nullcontext() if self.encoders_need_grad else torch.no_grad():
            return (self.visumodel(image, image_mask, names["vision"]),
                    self.textmodel(word_ids, word_mask, names["language"]))

    def branch_features(self, image, image_mask, word_ids, word_mask):
        """(vision features, vision mask, text features, text mask) after the side path. Frozen encoders can
        run in chunks of `frozen_chunk_size` samples, the side network on each chunk's taps, so no more than
        one chunk's frozen activations and taps exist at a time (every computation here is per sample)."""
        chunk = len(image) if self.encoders_need_grad or not self.frozen_chunk_size else self.frozen_chunk_size
        parts = []
        for i in range(0, len(image), chunk):
            vis, txt = self.encode(image[i:i + chunk], image_mask[i:i + chunk], word_ids[i:i + chunk],
                                   word_mask[i:i + chunk])
            v_feat, t_feat = vis.features, txt.features
            if self.side is not None:
                v_side, t_side = self.side(vis, txt)
                v_feat, t_feat = self.join(v_feat, v_side), self.join(t_feat, t_side)
            parts.append((v_feat, vis.mask, t_feat, txt.mask))
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(p) for p in zip(*parts))

    def join(self, features, side_output):
        """A branch's features after the side path: + the side output (`join` "add", the default: M2IST), or the side
        output alone ("replace": UniPT's MDETR instance, where the frozen features enter only through the side)."""
        if side_output is None:
            return features
        return side_output if getattr(self.side, "join", "add") == "replace" else features + side_output

    def forward(self, image, image_mask, word_ids, word_mask):
        return self.fuse(*self.branch_features(image, image_mask, word_ids, word_mask))

    def fuse(self, v_feat, v_mask, t_feat, t_mask):
        """The box from the branches' features: [REG] + projected text and visual tokens -> V-L encoder -> head."""
        bsz = v_feat.shape[0]
        tokens = torch.cat([self.reg_token.weight.expand(bsz, -1, -1), self.text_proj(t_feat),
                            self.visu_proj(v_feat)], dim=1)
        mask = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool, device=tokens.device), t_mask, v_mask], dim=1)
        pos = self.vl_pos_embed.weight.unsqueeze(0).expand(bsz, -1, -1)
        hs = self.vl_transformer(tokens, pos, mask)
        return self.bbox_embed(hs[:, 0]).sigmoid()
