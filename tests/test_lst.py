"""LST: the ladder forward and the side layers' initialisation by structured pruning of the frozen encoders
(ylsung/Ladder-Side-Tuning @1798e82: modeling_side_t5.py L1214-1243, pruning_methods.py pruning_without_residual
version 2 with the weights as importance), each restated here with plain tensor operations."""
from __future__ import annotations

import pytest
import torch

from methods import apply_method, build_method
from methods.lst import keep_rows
from helpers import random_batch, tiny_model


def lst_model(**options):
    model = tiny_model(seed=4)
    apply_method(build_method("lst", options), model)
    return model


def top_rows(importance, keep):
    """The `keep` rows of largest L1 norm, in their original order (no ties in random weights)."""
    return importance.abs().reshape(importance.shape[0], -1).sum(1).topk(keep).indices.sort().values


def test_keep_rows_drops_the_smallest_l1_rows_and_keeps_the_order():
    imp = torch.tensor([[1.0, -1.0], [0.1, 0.0], [-3.0, 0.0], [0.0, 0.5], [2.5, 0.0]])
    assert keep_rows(imp, 3).tolist() == [0, 2, 4]


def test_side_layers_start_from_the_pruned_backbone():
    model = lst_model()
    vis, bert = model.side.vision, model.side.language
    # vision: the first choice from input_proj's output channels, then q/k/v (one choice), out_proj, FFN
    full = model.visumodel
    s = vis.upsample.in_features
    rows = top_rows(full.input_proj.weight, s)
    for side, layer in zip(vis.layers, full.encoder.layers):
        d = layer.self_attn.embed_dim
        w = layer.self_attn.in_proj_weight
        q, k, v = (w[i * d:(i + 1) * d][:, rows] for i in range(3))
        rows = top_rows(q * k * v, s)
        torch.testing.assert_close(side.self_attn.in_proj_weight, torch.cat([q[rows], k[rows], v[rows]]), rtol=0, atol=0)
        torch.testing.assert_close(side.self_attn.in_proj_bias[:s], layer.self_attn.in_proj_bias[:d][rows])
        for side_linear, linear in ((side.self_attn.out_proj, layer.self_attn.out_proj), (side.linear1, layer.linear1),
                                    (side.linear2, layer.linear2)):
            cols, rows = rows, top_rows(linear.weight[:, rows], side_linear.out_features)
            torch.testing.assert_close(side_linear.weight, linear.weight[rows][:, cols], rtol=0, atol=0)
            torch.testing.assert_close(side_linear.bias, linear.bias[rows], rtol=0, atol=0)
            if side_linear is side.self_attn.out_proj:
                torch.testing.assert_close(side.norm1.weight, layer.norm1.weight[rows], rtol=0, atol=0)
        torch.testing.assert_close(side.norm2.bias, layer.norm2.bias[rows], rtol=0, atol=0)
    # language: the first choice over the word-embedding dimensions, then BERT's chain
    b = model.textmodel.bert
    rows = top_rows(b.embeddings.word_embeddings.weight.T, bert.upsample.in_features)
    for side, layer in zip(bert.layers, b.encoder.layer):
        fa, sa = layer.attention.self, side.attention.self
        q, k, v = (m.weight[:, rows] for m in (fa.query, fa.key, fa.value))
        rows = top_rows(q * k * v, sa.query.out_features)
        torch.testing.assert_close(sa.value.weight, v[rows], rtol=0, atol=0)
        for side_linear, linear in ((side.attention.output.dense, layer.attention.output.dense),
                                    (side.intermediate.dense, layer.intermediate.dense),
                                    (side.output.dense, layer.output.dense)):
            cols, rows = rows, top_rows(linear.weight[:, rows], side_linear.out_features)
            torch.testing.assert_close(side_linear.weight, linear.weight[rows][:, cols], rtol=0, atol=0)
        torch.testing.assert_close(side.output.LayerNorm.weight, layer.output.LayerNorm.weight[rows], rtol=0, atol=0)


def test_random_init_leaves_the_backbone_weights_out():
    pruned, random = lst_model(), lst_model(init="random")
    assert not torch.equal(pruned.side.vision.layers[0].linear1.weight, random.side.vision.layers[0].linear1.weight)


@pytest.mark.parametrize("branch", ["vision", "language"])
def test_ladder_forward_mixes_each_layer_output_through_its_gate(branch):
    """s = down_0(input); s = g_i s + (1 - g_i) down_i(h_i), g_i = sigmoid(alpha_i / T); s = side_i(s); up(s)."""
    model = lst_model().eval()
    ladder = getattr(model.side, branch)
    with torch.no_grad():
        ladder.gates.copy_(torch.tensor([0.3, -0.2] + [0.1] * (len(ladder.layers) - 2)))
    seen = {}
    model.side.register_forward_hook(lambda mod, args, out: seen.update(args=args, out=out))
    calls = []
    for layer in ladder.layers:
        layer.register_forward_hook(lambda mod, args, out: calls.append((args[0], out)))
    with torch.no_grad():
        model(*random_batch(model)[:4])
        out = seen["args"][0 if branch == "vision" else 1]
        s = ladder.first_downsample(out.inputs)
        for i, (tap, (s_in, s_out)) in enumerate(zip(out.taps, calls)):
            g = torch.sigmoid(ladder.gates[i] / 0.1)
            torch.testing.assert_close(s_in, g * s + (1 - g) * ladder.downsamples[i](tap["out"]))
            s = s_out
        torch.testing.assert_close(seen["out"][0 if branch == "vision" else 1], ladder.upsample(s))
    assert len(calls) == len(ladder.layers) == len(out.taps)
