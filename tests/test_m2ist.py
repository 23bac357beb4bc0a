"""M2IST: parameter counts at `paper`, the no-autograd side form vs the inline forms, the shared IEA, the
forward against explicit tensor formulas, and the released code's double LayerNorm."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.model.transformer import TAP_NAMES
import torch.nn.functional as F

import methods
from harness.errors import HarnessError
from harness.model import build_model, component_of, count_parameters, get_config
from methods import apply_method, build_method, describe_methods, method_defaults
from methods.m2ist import H1_TAP, M2ISTSlot
from helpers import random_batch, tiny_model

TINY_TUNABLE = 12_096  # derived: d 32, h 64, b 16, 2 vision + 2 language layers


def m2ist_model(seed=0, **options):
    model = tiny_model(seed)
    apply_method(build_method("m2ist", options), model)
    return model


def capture_side(model):
    """Records the (vision, language) BranchOutputs the side receives and the deltas it returns."""
    seen = {}
    model.side.register_forward_hook(lambda mod, args, out: seen.update(vis=args[0], txt=args[1], deltas=out))
    return seen


def l1_loss(model, batch):
    image, image_mask, word_ids, word_mask, box = batch
    return (model(image, image_mask, word_ids, word_mask) - box).abs().sum()


# ---- counts ---------------------------------------------------------------------------------------------
def paper_model(**options):
    with torch.device("meta"):
        model = build_model("paper")
        apply_method(build_method("m2ist", options), model)
    return model


def test_paper_counts_match_the_released_code():
    model = paper_model()
    c = count_parameters(model)
    assert c["encoder_side_trainable"] == 2_975_232
    assert c["trainable"] - c["encoder_side_trainable"] == 8_393_732
    assert c["by_component"]["side"] == {"total": 2_975_232, "trainable": 2_975_232}
    assert c["by_component"]["vision"]["trainable"] == c["by_component"]["language"]["trainable"] == 0
    # the reference's per-group arithmetic (reference/m2ist.md 1.3), unused LayerNorms / LoRA not built
    groups = {}
    for name, p in model.side.named_parameters():
        key = name.split(".")[0] + ("." + name.split(".")[2] if name.startswith(("vis_mha", "txt_mha")) else "")
        groups[key] = groups.get(key, 0) + p.numel()
    assert groups == {"iea": 198_144, "vis_mha.down": 197_376, "vea": 401_664 - 3_072,
                      "txt_mha.down": 590_592, "txt_mha.up": 396_288, "lea": 1_203_456 - 9_216}


@pytest.mark.parametrize("form", ["parallel", "sequential"])
def test_inline_forms_have_the_same_parameters(form):
    c = count_parameters(paper_model(form=form))
    assert c["encoder_side_trainable"] == 2_975_232
    assert c["trainable"] - c["encoder_side_trainable"] == 8_393_732


def test_describe_methods_lists_m2ist(monkeypatch):
    monkeypatch.setattr(methods, "method_names", lambda: ["m2ist"])  # others' methods are not under test here
    text = describe_methods("paper")
    row = next(line for line in text.splitlines() if line.startswith("m2ist"))
    assert "2,975,232" in row and "11,368,964" in row


def test_tiny_dimensions_are_derived():
    model = m2ist_model()
    side = model.side
    assert count_parameters(model)["encoder_side_trainable"] == TINY_TUNABLE
    assert (len(side.vis_mha), len(side.txt_mha), len(side.iea)) == (2, 2, 2)  # all 2 DETR, first 2 of 4 BERT
    assert side.vis_mha[0].down.weight.shape == (16, 32)  # b = 128 * 32 / 256
    assert side.txt_mha[0].up.weight.shape == (64 - 32, 16)  # h - d, so [up || IEA] is h = 64 wide
    assert side.lea[0].up.weight.shape == (64, 16)


def test_impossible_settings_are_clear_errors():
    with pytest.raises(HarnessError, match="form"):
        build_method("m2ist", {"form": "inline"})
    with pytest.raises(HarnessError, match="no side sum"):
        build_method("m2ist", {"form": "parallel", "side_terms": False})
    with pytest.raises(HarnessError, match="vision_layers"):
        apply_method(build_method("m2ist", {"vision_layers": 3}), tiny_model())
    cfg = get_config("tiny", vocab_size=64)
    narrow = replace(cfg, language=replace(cfg.language, hidden=32))  # h == d: no room for the up-projection
    with torch.device("meta"):
        model = build_model(narrow)
    with pytest.raises(HarnessError, match="language width"):
        apply_method(build_method("m2ist"), model)


def test_yaml_recipe_and_param_groups():
    assert method_defaults("m2ist")["recipe"] == {"lr_encoder": 1e-5, "lr": 1e-4, "weight_decay": 1e-4}
    model = m2ist_model()
    groups = {g["name"]: g for g in build_method("m2ist").param_groups(model, 1e-4, 1e-5)}
    assert {id(p) for p in groups["encoder_modules"]["params"]} == {id(p) for p in model.side.parameters()}
    assert groups["encoder_modules"]["lr"] == 1e-5 and groups["fusion_head"]["lr"] == 1e-4
    assert "encoder_weights" not in groups  # the encoders stay frozen


def test_init_as_the_released_code_ends_up():
    side = m2ist_model().side
    vision_bias = torch.cat([side.vis_mha[0].down.bias, side.vea[0].down.bias, side.vea[0].up.bias])
    assert vision_bias.min() >= 0 and vision_bias.max() <= 1 and vision_bias.std() > 0.1  # U(0, 1)
    w = side.vis_mha[0].down.weight
    assert w.abs().max() <= (6 / sum(w.shape)) ** 0.5  # xavier-uniform bound
    for lin in (side.iea[0], side.txt_mha[0].down, side.txt_mha[0].up, side.lea[0].down, side.lea[0].up):
        assert torch.count_nonzero(lin.bias) == 0
    assert 0.015 < torch.cat([side.txt_mha[0].down.weight.flatten(), side.iea[0].weight.flatten()]).std() < 0.025


# ---- gradients and autograd -----------------------------------------------------------------------------
def test_side_form_keeps_no_encoder_graph_and_trains_only_the_method_and_head():
    model = m2ist_model()
    assert model.encoders_need_grad is False
    seen = capture_side(model)
    grad_mode = []
    for branch in (model.visumodel, model.textmodel):
        branch.register_forward_pre_hook(lambda m, a: grad_mode.append(torch.is_grad_enabled()))
    model.train()
    l1_loss(model, random_batch(model)).backward()
    assert grad_mode == [False, False]  # both encoders ran without autograd
    for branch in (seen["vis"], seen["txt"]):
        tensors = [branch.features, branch.inputs] + [t for layer in branch.taps for t in layer.values()]
        assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    method_params = {id(p) for p in model.side.parameters()}
    for name, p in model.named_parameters():
        if id(p) in method_params or component_of(name) in ("fusion", "head"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    frozen_lns = [m._frozen[0] for m in list(model.side.txt_mha) + list(model.side.lea)]
    assert all(not p.requires_grad and p.grad is None for ln in frozen_lns for p in ln.parameters())
    assert not {id(p) for ln in frozen_lns for p in ln.parameters()} & method_params  # referenced, not registered


@pytest.mark.parametrize("form", ["parallel", "sequential"])
def test_inline_forms_send_gradients_through_the_frozen_encoders(form):
    model = m2ist_model(form=form)
    assert model.side is None and model.encoders_need_grad is True  # no side path: only the encoder stream
    outs = {}
    model.visumodel.register_forward_hook(lambda m, a, out: outs.update(vis=out))
    model.textmodel.register_forward_hook(lambda m, a, out: outs.update(txt=out))
    model.train()
    l1_loss(model, random_batch(model)).backward()
    assert outs["vis"].features.grad_fn is not None and outs["txt"].features.grad_fn is not None
    vis0, txt0 = model.encoder_layers("vision")[0], model.encoder_layers("language")[0]
    # layer-0 adapters reach the loss only through the frozen layers above them
    for slot in (vis0.attn_adapter, vis0.ffn_adapter, txt0.attention.output.adapter, txt0.output.adapter):
        assert slot.adapter.down.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if ".attn_adapter." in name or ".ffn_adapter." in name or ".adapter." in name:
            assert p.requires_grad and p.grad is not None, name
        elif component_of(name) in ("vision", "language"):
            assert p.grad is None and not p.requires_grad, name
    assert count_parameters(model)["encoder_side_trainable"] == TINY_TUNABLE


def test_inline_slot_reads_input_or_output():
    g = torch.Generator().manual_seed(3)
    h, x = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    for form, expected_read in (("parallel", x), ("sequential", h)):
        model = m2ist_model(form=form)
        slot = model.encoder_layers("vision")[1].attn_adapter
        a = slot.adapter
        expected = h + (F.relu(expected_read @ a.down.weight.T + a.down.bias) @ a.iea.weight.T + a.iea.bias)
        torch.testing.assert_close(slot(h, x), expected)


# ---- the shared IEA -------------------------------------------------------------------------------------
def test_shared_iea_is_one_set_of_weights_for_both_branches():
    model = m2ist_model()
    side = model.side
    for i, iea in enumerate(side.iea):
        assert side.vis_mha[i].iea is iea and side.txt_mha[i].iea is iea
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(id(p) for p in model.parameters()))  # every parameter yielded once
    assert sum("iea" in n for n in names) == 2 * len(side.iea)  # weight + bias per IEA, under side.iea only
    seen = capture_side(model)
    model.eval()
    with torch.no_grad():
        image, image_mask, word_ids, word_mask, _ = random_batch(model)
        model(image, image_mask, word_ids, word_mask)
    for branch, other in ((1, side.vis_mha), (0, side.txt_mha)):  # a loss through one branch only
        model.zero_grad(set_to_none=True)
        side(seen["vis"], seen["txt"])[branch].square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in side.iea.parameters())
        assert all(m.down.weight.grad is None for m in other)
    inline = m2ist_model(form="sequential")
    for i in range(2):
        assert (inline.encoder_layers("vision")[i].attn_adapter.adapter.iea
                is inline.encoder_layers("language")[i].attention.output.adapter.adapter.iea)


# ---- the forward against explicit formulas --------------------------------------------------------------
def _lin(x, lin):
    return x @ lin.weight.T + lin.bias


def _ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def _intra(z, a):
    return 0.1 * _lin(F.relu(_lin(_ln(z, a.norm), a.down)), a.up)


def manual_deltas(model, vis, txt, h1_key="attn_out", text_side_norms=True, side_terms=True, input_features=True):
    """The released side computation (trans_vg_lt.py forward), with the item-5 variants switched off or on."""
    side = model.side
    frozen_ln = _ln if text_side_norms else (lambda x, mod: x)
    dv = vis.inputs.clone() if input_features else torch.zeros_like(vis.inputs)
    dt = txt.inputs.clone() if input_features else torch.zeros_like(txt.inputs)
    if not side_terms:
        return dv, dt
    for i, taps in enumerate(vis.taps):
        dv = dv + _lin(F.relu(_lin(taps["attn"], side.vis_mha[i].down)), side.iea[i]) + _intra(taps["ffn"], side.vea[i])
    for i in range(len(side.txt_mha)):
        taps, layer = txt.taps[i], model.encoder_layers("language")[i]
        dd = F.relu(_lin(taps[h1_key], side.txt_mha[i].down))
        m = frozen_ln(torch.cat([_lin(dd, side.txt_mha[i].up), _lin(dd, side.iea[i])], -1),
                      layer.attention.output.LayerNorm)
        l_ = frozen_ln(_intra(taps["ffn"], side.lea[i]), layer.output.LayerNorm)
        dt = dt + m + l_
    return dv, dt


def manual_head(model, v_feat, t_feat, v_mask, t_mask):
    bsz = v_feat.shape[0]
    tokens = torch.cat([model.reg_token.weight.expand(bsz, -1, -1), _lin(t_feat, model.text_proj),
                        _lin(v_feat, model.visu_proj)], dim=1)
    mask = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool), t_mask, v_mask], dim=1)
    hs = model.vl_transformer(tokens, model.vl_pos_embed.weight.expand(bsz, -1, -1), mask)
    return model.bbox_embed(hs[:, 0]).sigmoid()


VARIANTS = [{}, {"text_side_norms": False}, {"side_terms": False}, {"input_features": False}]


@pytest.mark.parametrize("double_layernorm", [False, True])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "released")
def test_forward_matches_hand_computation(double_layernorm, variant):
    model = m2ist_model(double_layernorm=double_layernorm, **variant).eval()
    seen = capture_side(model)
    image, image_mask, word_ids, word_mask, _ = random_batch(model)
    with torch.no_grad():
        out = model(image, image_mask, word_ids, word_mask)
        vis, txt = seen["vis"], seen["txt"]
        dv, dt = manual_deltas(model, vis, txt, H1_TAP if double_layernorm else "attn_out", **variant)
        torch.testing.assert_close(seen["deltas"][0], dv)
        torch.testing.assert_close(seen["deltas"][1], dt)
        torch.testing.assert_close(out, manual_head(model, vis.features + dv, txt.features + dt, vis.mask, txt.mask))
        model.frozen_chunk_size = 1  # the chunked no-grad path gives the same numbers (side run per chunk)
        torch.testing.assert_close(model(image, image_mask, word_ids, word_mask), out)


def test_double_layernorm_changes_the_frozen_main_path_exactly():
    single, double = m2ist_model(seed=0, double_layernorm=False), m2ist_model(seed=0, double_layernorm=True)
    s_seen, d_seen = capture_side(single), capture_side(double)
    batch = random_batch(single)[:4]
    every_tap = {"vision": set(TAP_NAMES), "language": set(TAP_NAMES) | {H1_TAP}}
    for model in (single, double):
        model.tap_names = lambda: every_tap  # record all taps, not only those the side network reads
        model.eval()
        with torch.no_grad():
            model(*batch)
    torch.testing.assert_close(s_seen["vis"].features, d_seen["vis"].features)  # vision untouched
    layers = double.encoder_layers("language")
    for i, (s, d) in enumerate(zip(s_seen["txt"].taps, d_seen["txt"].taps)):
        ln = layers[i].attention.output.LayerNorm
        single_ln = _ln(d["attn"] + d["x"], ln)
        if i < 2:  # adapted layers: LN_att(LN_att(H + X) + X) on the main path, the side reads h1
            torch.testing.assert_close(d[H1_TAP], single_ln)
            torch.testing.assert_close(d["attn_out"], _ln(single_ln + d["x"], ln))
            assert not torch.allclose(d["attn_out"], single_ln, atol=1e-3)
        else:
            assert H1_TAP not in d
            torch.testing.assert_close(d["attn_out"], single_ln)
        torch.testing.assert_close(s["attn_out"], _ln(s["attn"] + s["x"], ln))
    torch.testing.assert_close(s_seen["txt"].taps[0]["attn"], d_seen["txt"].taps[0]["attn"])
    assert not torch.allclose(s_seen["txt"].features, d_seen["txt"].features, atol=1e-3)
    # training mode: one dropout (on H, inside h1), none between h1 and the second LayerNorm, as the code
    double.train()
    with torch.no_grad():
        double(*batch)
    d = d_seen["txt"].taps[0]
    ln = layers[0].attention.output.LayerNorm
    torch.testing.assert_close(d["attn_out"], _ln(d[H1_TAP] + d["x"], ln))
    assert not torch.allclose(d[H1_TAP], _ln(d["attn"] + d["x"], ln), atol=1e-4)  # dropout did act on H


def test_apply_method_accepts_and_applies_once():
    model = m2ist_model()
    assert all(not p.requires_grad for n, p in model.named_parameters() if component_of(n) in ("vision", "language"))
    assert isinstance(m2ist_model(double_layernorm=True).encoder_layers("language")[0].attention.output.adapter, M2ISTSlot)
    with pytest.raises(HarnessError, match="already"):
        apply_method(build_method("m2ist"), model)


def test_variants_train_what_they_use():
    """Without the side terms no adapter gets a gradient (they take no part; the count keeps them), the fusion
    still does; without the input features or the text-side norms every adapter still trains."""
    batch = random_batch(m2ist_model())
    for variant, adapters_train in (({"side_terms": False}, False), ({"input_features": False}, True),
                                    ({"text_side_norms": False}, True)):
        model = m2ist_model(**variant)
        assert count_parameters(model)["encoder_side_trainable"] == TINY_TUNABLE
        l1_loss(model, batch).backward()
        grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in model.side.parameters()]
        assert all(grads) if adapters_train else not any(grads), variant
        assert model.visu_proj.weight.grad.abs().sum() > 0
