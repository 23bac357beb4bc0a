"""The shared TransVG model: presets, parameter counts per component, seams."""
import pytest
import torch
from helpers import random_batch, tiny_model

from harness.errors import HarnessError
from harness.losses import rec_loss
from harness.model import build_model, count_parameters, get_config

# Analytic sizes at the paper preset (shared/reference/checkpoints.md, m2ist.md 1.3).
RESNET50_NO_FC = 25_557_032 - (2048 * 1000 + 1000)
# FrozenBatchNorm2d keeps its affine weight and bias as buffers (as DETR), so they are not parameters.
RESNET50_BN_AFFINE = 2 * (64 + sum(n * (w + w + 4 * w) for n, w in ((3, 64), (4, 128), (6, 256), (3, 512)))
                          + sum(4 * w for w in (64, 128, 256, 512)))


def detr_layer(d=256, ffn=2048):
    return (3 * d * d + 3 * d) + (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 4 * d


def bert_base_no_pooler(vocab=30522, h=768, layers=12, inter=3072, positions=512):
    emb = (vocab + positions + 2) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    return emb + layers * layer


def test_paper_preset_counts_per_component():
    with torch.device("meta"):
        model = build_model("paper")
    c = count_parameters(model)["by_component"]
    assert RESNET50_BN_AFFINE == 53_120
    assert c["vision"]["total"] == RESNET50_NO_FC - RESNET50_BN_AFFINE + (2048 * 256 + 256) + 6 * detr_layer()
    assert c["language"]["total"] == bert_base_no_pooler() == 108_891_648
    tokens = 1 + 20 + 400
    assert c["fusion"]["total"] == 6 * detr_layer() + (256 * 256 + 256) + (768 * 256 + 256) + 256 + tokens * 256
    assert c["head"]["total"] == 2 * (256 * 256 + 256) + 256 * 4 + 4
    # TransVG-R50 is 149,745,860 with BERT's unused pooler (768*768+768); ours leaves the pooler out.
    assert sum(v["total"] for v in c.values()) == 149_745_860 - (768 * 768 + 768)
    assert c["fusion"]["total"] + c["head"]["total"] == 8_393_732  # M2IST's always-trained part (L = 20)


def test_refcocog_query_length_grows_position_table():
    with torch.device("meta"):
        model = build_model("paper", max_query_len=40)
    assert model.vl_pos_embed.weight.shape == (1 + 40 + 400, 256)


@pytest.mark.parametrize("preset,size", [("tiny", None), ("paper", 64)])
def test_presets_forward_backward(preset, size):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=64, image_size=size)
    model.set_trainable(("vision", "language", "fusion", "head"), True)
    image, image_mask, word_ids, word_mask, box = random_batch(model, 2)
    pred = model(image, image_mask, word_ids, word_mask)
    assert pred.shape == (2, 4) and bool(((pred > 0) & (pred < 1)).all())
    rec_loss(pred, box)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["visumodel.backbone.layer4.0.conv1.weight"] is not None
    assert grads["textmodel.bert.encoder.layer.0.attention.self.query.weight"] is not None
    # DETR/TransVG never train the stem and layer1, whatever is asked.
    assert not model.visumodel.backbone.conv1.weight.requires_grad
    assert all(not p.requires_grad for p in model.visumodel.backbone.layer1.parameters())


def test_frozen_batchnorm_has_no_running_stat_updates():
    model = tiny_model()
    bn = model.visumodel.backbone.bn1
    assert type(bn).__name__ == "FrozenBatchNorm2d" and not list(bn.parameters())
    before = bn.running_mean.clone()
    model.train()
    model(*random_batch(model)[:4])
    assert torch.equal(before, bn.running_mean)


def test_taps_and_side_path():
    model = tiny_model().eval()
    batch = random_batch(model)[:4]
    seen = {}

    class Side(torch.nn.Module):
        def forward(self, vis, txt):
            seen["vis"], seen["txt"] = vis, txt
            return torch.ones_like(vis.features), None

    base = model(*batch)
    model.side = Side()
    shifted = model(*batch)
    vis, txt = seen["vis"], seen["txt"]
    assert len(vis.taps) == model.config.vision.layers and len(txt.taps) == model.config.language.layers
    for taps in (vis.taps, txt.taps):
        assert set(taps[0]) == {"x", "attn", "attn_out", "ffn", "out"}
        for prev, nxt in zip(taps, taps[1:]):
            assert torch.equal(prev["out"], nxt["x"])  # one layer's output is the next one's input
    assert torch.equal(vis.taps[-1]["out"], vis.features) and torch.equal(txt.taps[-1]["out"], txt.features)
    assert torch.equal(vis.taps[0]["x"], vis.inputs) and torch.equal(txt.taps[0]["x"], txt.inputs)
    # BERT's embedding output is layer 0's input.
    emb = model.textmodel.bert.embeddings(input_ids=batch[2])
    assert torch.allclose(txt.inputs, emb)
    # The side delta is added to the vision features before projection: the output changes.
    assert not torch.allclose(base, shifted)


def test_adapter_slots_see_sublayer_output_and_input():
    model = tiny_model().eval()
    batch = random_batch(model)[:4]
    base = model(*batch)
    calls = []

    class Record(torch.nn.Module):
        def forward(self, h, x):
            calls.append((h.shape, x.shape))
            return h

    for branch in ("vision", "language"):
        layer = model.encoder_layers(branch)[0]
        if branch == "vision":
            layer.attn_adapter, layer.ffn_adapter = Record(), Record()
        else:
            layer.attention.output.adapter, layer.output.adapter = Record(), Record()
    assert torch.allclose(model(*batch), base)  # identity slots change nothing
    assert len(calls) == 4 and all(h == x for h, x in calls)


def test_no_autograd_switch_keeps_no_encoder_graph_and_chunks_agree():
    model = tiny_model()
    model.set_trainable(("vision", "language"), False)
    batch = random_batch(model, 3)[:4]
    model.eval()
    model.encoders_need_grad = False
    vis, txt = model.encode(*batch)
    assert vis.features.grad_fn is None and txt.features.grad_fn is None
    whole = model(*batch)
    model.frozen_chunk_size = 2
    assert torch.allclose(model(*batch), whole, atol=1e-6)


def test_side_network_reads_only_the_taps_it_asks_for_and_chunks_agree():
    model = tiny_model().eval()
    model.set_trainable(("vision", "language"), False)
    model.encoders_need_grad = False
    batch = random_batch(model, 3)[:4]
    seen = []

    class Side(torch.nn.Module):
        tap_names = {"vision": {"ffn"}, "language": {"attn_out"}}

        def __init__(self):
            super().__init__()
            self.v = torch.nn.Linear(model.config.vision.d_model, model.config.vision.d_model)

        def forward(self, vis, txt):
            seen.append((len(vis.features), {k for t in vis.taps for k in t}, {k for t in txt.taps for k in t}))
            return sum(self.v(t["ffn"]) for t in vis.taps), sum(t["attn_out"] for t in txt.taps)

    model.side = Side()
    whole = model(*batch)
    assert seen == [(3, {"ffn"}, {"attn_out"})]
    model.frozen_chunk_size = 2
    assert torch.allclose(model(*batch), whole, atol=1e-6)
    assert [n for n, *_ in seen[1:]] == [2, 1]  # the side network ran once per chunk


def test_folded_batchnorm_is_the_same_function_and_keeps_the_state_dict():
    model = tiny_model()
    with torch.no_grad():  # non-trivial frozen statistics
        for name, buf in model.named_buffers():
            if "running_var" in name:
                buf.uniform_(0.5, 2.0)
            elif "running_mean" in name or name.endswith((".bn1.bias", ".bn2.bias", ".bn3.bias")):
                buf.normal_(0, 0.1)
    model.eval()
    batch = random_batch(model)[:4]
    before, keys = model(*batch), list(model.state_dict())
    model.optimize_for_training()
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    assert list(model.state_dict()) == keys
    assert torch.allclose(model(*batch), before, atol=1e-5)
    # loading a state dict after folding is honoured (the fold is recomputed from the buffers)
    other = tiny_model(seed=3).eval()
    model.load_state_dict(other.state_dict())
    assert torch.allclose(model(*batch), other(*batch), atol=1e-5)
    # a trainable folded convolution gets the gradient of the unfolded one
    reference = tiny_model(seed=3).eval()
    for m in (model, reference):
        m.set_trainable("vision", True)
        m.zero_grad()
        m(*batch).sum().backward()
    w = "visumodel.backbone.layer2.0.conv1.weight"
    grads = {id(m): dict(m.named_parameters())[w].grad for m in (model, reference)}
    assert torch.allclose(grads[id(model)], grads[id(reference)], atol=1e-5, rtol=1e-4)


def test_eager_attention_is_numerically_the_same():
    model = tiny_model().eval()
    batch = random_batch(model)[:4]
    fused = model(*batch)
    model.set_eager_attention(True)
    assert torch.allclose(model(*batch), fused, atol=1e-5)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(HarnessError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(HarnessError, match="multiple of the backbone stride"):
        get_config("tiny", image_size=100)


@pytest.mark.parametrize("method", ["full", "m2ist"])
def test_fusion_checkpointing_keeps_the_loss_and_every_gradient(method):
    """Activation checkpointing of the V-L fusion (recipe checkpoint_fusion): same loss, same gradients, dropout
    included (the recomputation replays the RNG state), and less saved for backward."""
    from harness.losses import rec_loss
    from methods import apply_method, build_method

    model = tiny_model(seed=4)
    apply_method(build_method(method), model)
    for layer in model.vl_transformer.layers:  # the tiny fusion has no dropout: give it some to replay
        layer.self_attn.dropout = 0.1
        for m in (layer.dropout, layer.dropout1, layer.dropout2):
            m.p = 0.1
    model.train()
    *inputs, box = random_batch(model, batch_size=3)
    outcome = {}
    for checkpointing in (False, True):
        model.vl_transformer.checkpoint_layers = checkpointing
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = rec_loss(model(*inputs), box)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outcome[checkpointing] = (loss.detach(), grads, sum(saved))
    (loss0, grads0, saved0), (loss1, grads1, saved1) = outcome[False], outcome[True]
    torch.testing.assert_close(loss1, loss0)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-6, msg=name)
    assert saved1 < saved0


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("normalize_before, final_norm", [(False, None), (True, None), (True, False)])
def test_fusion_is_transvg_forward_post_or_forward_pre_with_the_final_norm(eager, normalize_before, final_norm):
    """The V-L fusion as TransVG's vl_transformer (models/vl_transformer.py @c862427): post-norm layers (the paper
    preset), or with its normalize_before switch pre-norm layers (L105-121) and the final encoder_norm, restated with
    plain tensor operations in float64 (released_ops); `final_norm: false` (the tiny preset's) drops only the
    final LayerNorm."""
    from dataclasses import replace

    from harness.model import TransVG, get_config
    from released_ops import fusion_boxes

    cfg = get_config("tiny", vocab_size=50)
    torch.manual_seed(0)
    fusion = replace(cfg.fusion, normalize_before=normalize_before, final_norm=final_norm)
    model = TransVG(replace(cfg, fusion=fusion)).double().eval()
    model.set_eager_attention(eager)
    assert (model.vl_transformer.norm is None) == (not normalize_before or final_norm is False)
    assert all(layer.normalize_before == normalize_before for layer in model.vl_transformer.layers)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(2, cfg.visual_tokens, cfg.vision.d_model, generator=gen, dtype=torch.float64)
    t = torch.randn(2, cfg.max_query_len, cfg.language.hidden, generator=gen, dtype=torch.float64)
    v_mask = torch.zeros(2, cfg.visual_tokens, dtype=torch.bool)
    t_mask = torch.arange(cfg.max_query_len).expand(2, -1) >= torch.tensor([[5], [9]])
    with torch.no_grad():
        assert (model.fuse(v, v_mask, t, t_mask) - fusion_boxes(model, t, t_mask, v, v_mask)).abs().max() < 1e-12
