"""Plain tensor restatements of the layers the released TransVG-family code runs (DETR forward_post, BERT
attention, TransVG's fusion and head), for the float64 tests of methods as released (M2IST, DARA): none of the
project's attention, BERT, slot, tap or side code runs in them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ln(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)


def lin(x, linear):
    return F.linear(x, linear.weight, linear.bias)


def heads_split(x, heads):
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def attention(q, k, v, heads, pad):
    """softmax(Q K^T / sqrt(d_head)) V over heads; `pad` (B, N_k) True = padded key."""
    q, k, v = (heads_split(t, heads) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def mha(module, query, key, value, pad):
    """nn.MultiheadAttention as DETR calls it (packed in_proj, out_proj)."""
    w, b, d = module.in_proj_weight, module.in_proj_bias, query.shape[-1]
    q, k, v = (F.linear(x, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i, x in enumerate((query, key, value)))
    return F.linear(attention(q, k, v, module.num_heads, pad), module.out_proj.weight, module.out_proj.bias)


def post_norm_layer(layer, src, pos, pad):
    """DETR / TransVG forward_post: (attention output, post-attention LN output, FFN output, layer output)."""
    a = mha(layer.self_attn, src + pos, src + pos, src, pad)
    x1 = ln(src + a, layer.norm1)
    f = lin(F.relu(lin(x1, layer.linear1)), layer.linear2)
    return a, x1, f, ln(x1 + f, layer.norm2)


def vision_input(model, image, image_mask):
    """(input_proj output, sine position embedding, padding mask) of the DETR encoder, flattened: ResNet trunk
    (timm, FrozenBatchNorm) and DETR's sine embedding called as modules; no method touches them."""
    feat = model.visumodel.backbone.forward_features(image)
    vmask = F.interpolate(image_mask[None].float(), size=feat.shape[-2:])[0].to(torch.bool)
    pos = model.visumodel.position(vmask).to(feat.dtype).flatten(2).transpose(1, 2)
    proj = model.visumodel.input_proj
    return F.conv2d(feat, proj.weight, proj.bias).flatten(2).transpose(1, 2), pos, vmask.flatten(1)


def pre_norm_layer(layer, src, pos, pad):
    """TransVG forward_pre (its normalize_before switch, models/vl_transformer.py L105-121 @c862427)."""
    h = ln(src, layer.norm1)
    x1 = src + mha(layer.self_attn, h + pos, h + pos, h, pad)
    return x1 + lin(F.relu(lin(ln(x1, layer.norm2), layer.linear1)), layer.linear2)


def fusion_boxes(model, text, tpad, visual, vmask):
    """TransVG's fusion and head: [REG] + projected text + visual tokens, post-norm layers (or, as the tiny preset
    sets it, forward_pre layers, with the final LayerNorm where the model has one), MLP + sigmoid."""
    bsz = text.shape[0]
    tokens = torch.cat([model.reg_token.weight.expand(bsz, -1, -1), lin(text, model.text_proj),
                        lin(visual, model.visu_proj)], 1)
    pad = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool), tpad, vmask], 1)
    vl_pos = model.vl_pos_embed.weight.unsqueeze(0).expand(bsz, -1, -1)
    for layer in model.vl_transformer.layers:
        tokens = (pre_norm_layer(layer, tokens, vl_pos, pad) if layer.normalize_before
                  else post_norm_layer(layer, tokens, vl_pos, pad)[3])
    if model.vl_transformer.norm is not None:
        tokens = ln(tokens, model.vl_transformer.norm)
    out = tokens[:, 0]
    for j, linear in enumerate(model.bbox_embed.layers):
        out = lin(out, linear)
        if j < len(model.bbox_embed.layers) - 1:
            out = F.relu(out)
    return out.sigmoid()
