"""DARA as released: the default `dara` model computes what the released code computes.

The reference below restates the released forward (liuting20/DARA @3e506f7: models/DARA.py forward,
models/visual_model/transformer.py forward_post L216-251, models/language_model/med.py BertSelfOutput L271-284,
BertLayer L410-447, BertEncoder L463-468 and L547, models/adapter.py DA_Adapter_* / RA_Adapter) with plain tensor
operations on the model's weights (tests/released_ops.py): none of the project's attention, BERT, slot or seam
code runs in it. The RA of layer i is read from DETR layer i only, so a text path with its own copy of the RA
weights cannot match the `added` restatement. The check runs in float64, in eval mode (no dropout).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from methods import apply_method, build_method
from helpers import random_batch, tiny_model
from released_ops import attention, fusion_boxes, lin, ln, mha, vision_input


def domain_adapter(h, da):
    """DA_Adapter (adapter.py L68-91, add_residual=False): 0.1 * up(ReLU(down(LN_in(h))))."""
    return 0.1 * lin(F.relu(lin(ln(h, da.norm), da.down)), da.up)


def released_boxes(model, image, image_mask, word_ids, word_mask, text_relation="discarded"):
    vis_layers = list(model.visumodel.encoder.layers)
    ras = [layer.ffn_parallel.shared for layer in vis_layers]  # RA_i: one module per layer index (DARA.py L28-34)
    # ---- vision: every DETR layer, DA replacing the attention output, RA beside the FFN (transformer.py L221-249)
    x, pos, vmask = vision_input(model, image, image_mask)
    for i, layer in enumerate(vis_layers):
        src1 = mha(layer.self_attn, x + pos, x + pos, x, vmask)
        src3 = ln(x + domain_adapter(src1, layer.attn_adapter), layer.norm1)
        share_out = lin(F.relu(lin(src3, layer.ffn_parallel.down)), ras[i])
        src4 = lin(F.relu(lin(src3, layer.linear1)), layer.linear2)
        x = ln(src3 + src4 + share_out, layer.norm2)

    # ---- language: BLIP's med.py BERT (no token types); layers i < n: DA replaces the attention output
    bert = model.textmodel.bert
    emb = bert.embeddings
    positions = torch.arange(word_ids.shape[1])
    h = ln(emb.word_embeddings.weight[word_ids] + emb.position_embeddings.weight[positions], emb.LayerNorm)
    tpad = ~word_mask.to(torch.bool)
    for i, layer in enumerate(bert.encoder.layer):
        sa, so = layer.attention.self, layer.attention.output
        ctx = attention(lin(h, sa.query), lin(h, sa.key), lin(h, sa.value), bert.config.num_attention_heads, tpad)
        dense = lin(ctx, so.dense)
        adapted = so.adapter is not None
        att = ln((domain_adapter(dense, so.adapter) if adapted else dense) + h, so.LayerNorm)
        f = lin(F.gelu(lin(att, layer.intermediate.dense)), layer.output.dense)
        out = f + att
        if adapted and text_relation == "added":  # our variant: cat(text_upsample, RA_i) joins the FFN sum
            rel = layer.output.parallel
            z = F.relu(lin(att, rel.down))
            out = out + torch.cat([lin(z, rel.private_up), lin(z, ras[i])], -1)
        h = ln(out, layer.output.LayerNorm)  # the released text RA output (cat_out) is discarded (med.py L547)
    return fusion_boxes(model, h, tpad, x, vmask)


def dara_float64(**options):
    model = tiny_model(seed=3)
    apply_method(build_method("dara", options), model)
    with torch.no_grad():
        model.textmodel.bert.embeddings.token_type_embeddings.weight.normal_(std=0.05)  # must stay unused
        for p in model.parameters():  # adapters away from their init, so every piece shows in the boxes
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.double().eval()


def batch64(model):
    image, image_mask, word_ids, word_mask, _ = random_batch(model, batch_size=3, seed=5)
    return image.double(), image_mask, word_ids, word_mask


@pytest.mark.parametrize("runtime_eager", [False, True])
@pytest.mark.parametrize("text_relation", ["discarded", "added"])
def test_dara_is_the_released_forward_in_float64(runtime_eager, text_relation):
    model = dara_float64(text_relation=text_relation)
    model.set_eager_attention(runtime_eager)
    batch = batch64(model)
    with torch.no_grad():
        assert (model(*batch) - released_boxes(model, *batch, text_relation=text_relation)).abs().max() < 1e-12


def test_the_relation_adapter_is_one_module_per_layer_index_across_the_encoders():
    model = dara_float64(text_relation="added")
    vis, txt = model.visumodel.encoder.layers, model.textmodel.bert.encoder.layer
    for i in range(2):
        assert txt[i].output.parallel.shared is vis[i].ffn_parallel.shared
    assert vis[0].ffn_parallel.shared is not vis[1].ffn_parallel.shared


def test_the_check_fails_on_an_unshared_weight_a_misplaced_adapter_or_the_other_variant():
    """Each wrong wiring, given the same weights as a correct model, leaves that model's released boxes."""

    def gap(wrong, right, text_relation="discarded"):
        batch = batch64(right)
        with torch.no_grad():
            return (wrong(*batch) - released_boxes(right, *batch, text_relation=text_relation)).abs().max()

    right = dara_float64(text_relation="added")
    unshared = copy.deepcopy(right)  # the text side of layer 0 holds its own copy of RA_0, trained apart
    own = copy.deepcopy(unshared.textmodel.bert.encoder.layer[0].output.parallel.shared)
    with torch.no_grad():
        own.weight.add_(0.05 * torch.randn_like(own.weight))
    unshared.textmodel.bert.encoder.layer[0].output.parallel.shared = own
    assert gap(unshared, right, "added") > 1e-6
    assert gap(right, right, "discarded") > 1e-6  # the variant is not the released computation

    right = dara_float64()
    misplaced = copy.deepcopy(right)  # DA after the FFN instead of after the attention
    for layer in misplaced.visumodel.encoder.layers:
        layer.attn_adapter, layer.ffn_adapter = None, layer.attn_adapter
    assert gap(misplaced, right) > 1e-6
    with_token_types = copy.deepcopy(right)
    with_token_types.textmodel.token_type_embedding = True
    assert gap(with_token_types, right) > 1e-6
