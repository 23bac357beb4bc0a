"""DETR's post-norm transformer encoder, shared by the vision branch and the V-L fusion.

Parameter names follow DETR (`self_attn`, `linear1`, `linear2`, `norm1`, `norm2`) so DETR / TransVG
checkpoints map onto it key for key. Each layer carries the two seams methods use:
- adapter slots `attn_adapter` / `ffn_adapter`: a module f(H, X) -> H' applied to a sub-layer's output H
  (X = the sub-layer's input) before the residual add and LayerNorm (Adapter, VL-PET, sequential forms);
- `ffn_parallel`: a module g(X) on the FFN sub-layer's input whose output joins the residual sum beside the
  FFN, outside its dropout: out = LN(X + drop(FFN(X)) + g(X)) (DARA's relation-aware adapter);
- taps: when a `Taps` list is passed, the layer appends the requested ones of {x, attn, attn_out, ffn,
  out} for side networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# Names of the per-layer taps, shared with the language branch.
TAP_NAMES = ("x", "attn", "attn_out", "ffn", "out")


class Taps(list):
    """One dict per layer holding the requested taps only: a side network that reads two of the five keeps
    the other three out of memory (at 640 px a vision tap is 400 tokens x 256 per sample)."""

    def __init__(self, names=TAP_NAMES):
        super().__init__()
        self.names = frozenset(names)

    def add(self, **tensors):
        self.append({k: v for k, v in tensors.items() if k in self.names})


class EncoderLayer(nn.Module):
    """DETR / TransVG's encoder layer: post-norm (forward_post) by default; `normalize_before` = its forward_pre,
    x + attn(LN1(x)), then x + FFN(LN2(x)) (TransVG models/vl_transformer.py L105-121 @c862427)."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float, normalize_before: bool = False):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.attn_adapter: nn.Module | None = None
        self.ffn_adapter: nn.Module | None = None
        self.ffn_parallel: nn.Module | None = None
        # need_weights=True makes nn.MultiheadAttention take its explicit bmm/softmax path instead of the
        # fused kernel (SDPA): what the released TransVG/M2IST code runs (recipe `runtime: released`), and
        # what FLOP counters need to see the attention matmuls.
        self.eager_attention = False

    def forward(self, src, pos, key_padding_mask, taps: Taps | None = None):
        if self.normalize_before:
            return self.forward_pre(src, pos, key_padding_mask, taps)
        q = k = src + pos
        attn = self.self_attn(q, k, src, key_padding_mask=key_padding_mask,
                              need_weights=self.eager_attention, average_attn_weights=False)[0]
        a = attn if self.attn_adapter is None else self.attn_adapter(attn, src)
        x1 = self.norm1(src + self.dropout1(a))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x1))))
        f = ffn if self.ffn_adapter is None else self.ffn_adapter(ffn, x1)
        residual = x1 + self.dropout2(f)
        out = self.norm2(residual if self.ffn_parallel is None else residual + self.ffn_parallel(x1))
        if taps is not None:
            taps.add(x=src, attn=attn, attn_out=x1, ffn=ffn, out=out)
        return out

    def forward_pre(self, src, pos, key_padding_mask, taps: Taps | None = None):
        """Pre-norm, with the same slots and taps (attn_out = the residual stream after attention)."""
        h = self.norm1(src)
        attn = self.self_attn(h + pos, h + pos, h, key_padding_mask=key_padding_mask,
                              need_weights=self.eager_attention, average_attn_weights=False)[0]
        a = attn if self.attn_adapter is None else self.attn_adapter(attn, h)
        x1 = src + self.dropout1(a)
        h = self.norm2(x1)
        ffn = self.linear2(self.dropout(F.relu(self.linear1(h))))
        f = ffn if self.ffn_adapter is None else self.ffn_adapter(ffn, h)
        out = x1 + self.dropout2(f) + (0 if self.ffn_parallel is None else self.ffn_parallel(h))
        if taps is not None:
            taps.add(x=src, attn=attn, attn_out=x1, ffn=ffn, out=out)
        return out


class Encoder(nn.Module):
    """A stack of layers: post-norm without a final norm (DETR's default), or with `normalize_before` pre-norm
    layers and a final LayerNorm `norm` (DETR / TransVG: encoder_norm = LayerNorm if normalize_before else None);
    `final_norm` overrides that rule (None = follow it).

    `checkpoint_layers`: activation checkpointing, one segment per layer (torch.utils.checkpoint, non-reentrant,
    RNG state preserved so dropout replays the same masks): a layer keeps only its input for backward and
    recomputes its activations there. Numerics unchanged; used for the V-L fusion (recipe `checkpoint_fusion`)."""

    def __init__(self, layers: int, d_model: int, heads: int, ffn: int, dropout: float,
                 normalize_before: bool = False, final_norm: bool | None = None):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ffn, dropout, normalize_before)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d_model) if (normalize_before if final_norm is None else final_norm) else None
        self.checkpoint_layers = False
        for p in self.parameters():  # DETR Transformer._reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, pos, key_padding_mask, taps: Taps | None = None):
        recompute = self.checkpoint_layers and torch.is_grad_enabled() and taps is None
        for layer in self.layers:
            if recompute:
                src = checkpoint(layer, src, pos, key_padding_mask, use_reentrant=False)
            else:
                src = layer(src, pos, key_padding_mask, taps)
        return src if self.norm is None else self.norm(src)


class PositionEmbeddingSine(nn.Module):
    """DETR's sine position embedding (normalize=True, scale 2*pi, temperature 10000); no parameters."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * torch.pi

    def forward(self, mask: torch.Tensor) -> torch.Tensor:  # mask (B, H, W), True = padding
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2*num_pos_feats, H, W)


class MLP(nn.Module):
    """DETR's box MLP: Linear layers with ReLU between them."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, num_layers: int):
        super().__init__()
        dims = [d_in] + [d_hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [d_out]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
