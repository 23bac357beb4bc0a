"""The PETL baselines (adapter, lora, vlpet, unipt, bitfit, dara, lst): what trains, identity at initialisation, where
gradients go (through the frozen encoders for the inline methods, never into them for UniPT), peft's
MultiheadAttention wrapper, VL-PET's gate granularities, UniPT's masks, and the paper-preset counts derived
from formulas."""
from __future__ import annotations

import pytest
import torch

from harness.model import PRESETS, build_model, component_of, count_parameters
from harness.recipe import build_recipe
from methods import apply_method, build_method, method_defaults
from methods.modules import scaled
from methods.vlpet import VLPETModule
from helpers import random_batch, tiny_model

INLINE = ("adapter", "lora", "vlpet", "bitfit", "dara")
SIDE = ("unipt", "lst")  # side networks over frozen encoders run without autograd
ALL = INLINE + SIDE


def tuned_model(name, seed=0, **options):
    model = tiny_model(seed)
    apply_method(build_method(name, options), model)
    return model


def l1_loss(model, batch):
    image, image_mask, word_ids, word_mask, box = batch
    return (model(image, image_mask, word_ids, word_mask) - box).abs().sum()


def layer_prefixes(cfg):
    """Name prefixes of every encoder layer: vision (DETR) and language (BERT)."""
    vision = [f"visumodel.encoder.layers.{i}." for i in range(cfg.vision.layers)]
    language = [f"textmodel.bert.encoder.layer.{i}." for i in range(cfg.language.layers)]
    return vision, language


def expected_method_prefixes(name, cfg):
    """Name prefixes (or full names) of the parameters each method should train inside / beside the encoders."""
    vision, language = layer_prefixes(cfg)
    slots = [p + s for p in vision for s in ("attn_adapter.", "ffn_adapter.")]
    slots += [p + s for p in language for s in ("attention.output.adapter.", "output.adapter.")]
    norms = [p + f"norm{k}.{w}" for p in vision for k in (1, 2) for w in ("weight", "bias")]
    norms += [p + f"{s}LayerNorm.{w}" for p in language for s in ("attention.output.", "output.")
              for w in ("weight", "bias")]
    if name == "adapter":  # Houlsby: every LayerNorm, BERT's embedding LayerNorm included
        return slots + norms + [f"textmodel.bert.embeddings.LayerNorm.{w}" for w in ("weight", "bias")]
    if name == "vlpet":
        return slots + norms
    if name == "lora":
        factors = [f"lora_{ab}.default.weight" for ab in "AB"]
        return ([p + f"self_attn.{f}" for p in vision for f in factors]
                + [p + f"self_attn.base_layer.out_proj.{f}" for p in vision for f in factors]
                + [p + f"attention.self.{q}.{f}" for p in language for q in ("query", "value") for f in factors])
    if name == "bitfit":  # every bias of both encoders (BitFit's 'all'), the input projection's included
        return (["visumodel.input_proj.bias", "textmodel.bert.embeddings.LayerNorm.bias"]
                + [p + s for p in vision for s in ("self_attn.in_proj_bias", "self_attn.out_proj.bias", "linear1.bias",
                                                   "linear2.bias", "norm1.bias", "norm2.bias")]
                + [p + s + ".bias" for p in language
                   for s in ("attention.self.query", "attention.self.key", "attention.self.value",
                             "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                             "output.dense", "output.LayerNorm")])
    if name == "dara":  # every DETR layer: DA in the attention slot, RA beside the FFN; BERT's first half: DA
        return ([p + s for p in vision for s in ("attn_adapter.", "ffn_parallel.")]
                + [p + "attention.output.adapter." for p in language[:cfg.language.layers // 2]])
    if name == "lst":  # the two ladders, whole
        return ["side.vision.", "side.language."]
    if name == "unipt":  # grounding instance: every second layer output from h_1 (tiny: [1] and [1, 3])
        return ([f"side.vision.downsample.{i}." for i in range(len(range(1, cfg.vision.layers, 2)))]
                + [f"side.language.downsample.{i}." for i in range(len(range(1, cfg.language.layers, 2)))]
                + [f"side.{b}.{m}." for b in ("vision", "language")
                   for m in ("anchor_downsample", "gate", "projection", "upsample")])
    raise KeyError(name)


# ---- what trains ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_exactly_the_method_parameters_and_fusion_head_train(name):
    model = tuned_model(name)
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    fusion_head = {n for n in names if component_of(n) in ("fusion", "head")}
    prefixes = expected_method_prefixes(name, model.config)
    method = {n for n in names if n.startswith(tuple(prefixes))}
    assert all(any(n.startswith(p) for n in method) for p in prefixes), "a site got no module"
    assert trainable == fusion_head | method
    assert model.encoders_need_grad is (name not in SIDE)


@pytest.mark.parametrize("name", ALL)
def test_yaml_recipe_overrides_are_valid(name):
    recipe = build_recipe("paper", "unc", method_defaults(name)["recipe"])
    assert recipe.lr == 1e-4 and recipe.lr_encoder > 0


# ---- identity at initialisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("adapter", {}), ("lora", {}),
                                           ("vlpet", {"gate": "middleY", "init": "zero", "scale": 1.0})])
def test_identity_at_initialisation(name, options):
    batch = random_batch(tiny_model())[:4]
    base, tuned = tiny_model(0).eval(), tuned_model(name, 0, **options).eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(*batch), base(*batch), rtol=0, atol=1e-6)


def test_vlpet_default_large_gate_is_not_the_identity():
    batch = random_batch(tiny_model())[:4]
    base, tuned = tiny_model(0).eval(), tuned_model("vlpet", 0).eval()
    with torch.no_grad():
        assert (tuned(*batch) - base(*batch)).abs().max() > 1e-4


def test_vlpet_t5_zero_init_large_gate_starts_at_half_scale():
    torch.manual_seed(0)
    module = VLPETModule(8, 2, gate="large", scale=0.3, init="zero")
    h, x = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(module(h, x), 0.3 * 0.5 * h)


# ---- gradients --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_only_trainable_parameters(name):
    model = tuned_model(name).train()
    batch = random_batch(model)
    l1_loss(model, batch).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{n} is trainable but got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    if name in INLINE:  # the first layer of each encoder is reached only through the later frozen layers
        vision, language = layer_prefixes(model.config)
        for first in (vision[0], language[0]):
            grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(first) and p.requires_grad]
            assert grads and max(grads) > 0, f"no gradient crossed the frozen encoder down to {first}"


@pytest.mark.parametrize("name", SIDE)
def test_side_networks_keep_no_autograd_state_in_the_encoders(name):
    model = tuned_model(name).train()
    seen = {}
    model.side.register_forward_hook(lambda mod, args, out: seen.update(vis=args[0], txt=args[1], deltas=out))
    l1_loss(model, random_batch(model)).backward()
    for out in (seen["vis"], seen["txt"]):
        tensors = [out.features, out.inputs] + [t for tap in out.taps for t in tap.values()]
        assert all(t.grad_fn is None and not t.requires_grad for t in tensors)
    assert all(d.grad_fn is not None for d in seen["deltas"])  # the side network itself is differentiated
    assert all(p.grad is not None for p in model.side.parameters())


def test_lora_gradients_reach_every_factor():
    model = tuned_model("lora").train()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    with torch.no_grad():  # B starts at zero, which stops A's gradient; give B values to see both
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(std=0.1)
    l1_loss(model, random_batch(model)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), \
        [n for n, p in lora.items() if p.grad is None or p.grad.abs().sum() == 0]


# ---- peft's nn.MultiheadAttention wrapper -------------------------------------------------------------------
@pytest.mark.parametrize("alpha, scale", [(None, 1.0), (128.0, 2.0)])  # alpha at the paper preset's rank 64
def test_lora_mha_is_the_merged_attention_in_eval_with_weights_and_padding(alpha, scale):
    model = tuned_model("lora", alpha=alpha).eval()
    attn = model.visumodel.encoder.layers[0].self_attn
    for n, p in attn.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    d = model.config.vision.d_model
    g = torch.Generator().manual_seed(3)
    q, v = torch.randn(2, 6, d, generator=g), torch.randn(2, 6, d, generator=g)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    # reference: a plain nn.MultiheadAttention with W + (alpha / r) B A in in_proj and out_proj
    base = attn.get_base_layer()
    out_lora = base.out_proj

    def delta(layer):
        return scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight

    ref = torch.nn.MultiheadAttention(d, base.num_heads, batch_first=True).eval()
    with torch.no_grad():
        frozen_in = base.in_proj_weight.clone()
        ref.in_proj_weight.copy_(frozen_in + delta(attn))
        ref.in_proj_bias.copy_(base.in_proj_bias)
        ref.out_proj.weight.copy_(out_lora.base_layer.weight + delta(out_lora))
        ref.out_proj.bias.copy_(out_lora.base_layer.bias)
        for need_weights in (False, True):
            got, weights = attn(q, q, v, key_padding_mask=pad, need_weights=need_weights, average_attn_weights=False)
            want, want_weights = ref(q, q, v, key_padding_mask=pad, need_weights=need_weights,
                                     average_attn_weights=False)
            torch.testing.assert_close(got[~pad], want[~pad], rtol=1e-5, atol=1e-5)
            if need_weights:
                torch.testing.assert_close(weights, want_weights)
                assert weights[0, :, :, 4:].abs().max() == 0  # padded keys get no attention
        # the frozen weight is back after the call (peft merges before and unmerges after it)
        torch.testing.assert_close(attn.get_base_layer().in_proj_weight, frozen_in)
    # the whole model gives the same boxes with eager attention (FLOP counting) as without
    batch = random_batch(model)[:4]
    with torch.no_grad():
        fast = model(*batch)
        model.set_eager_attention(True)
        torch.testing.assert_close(model(*batch), fast, rtol=1e-5, atol=1e-5)


# ---- VL-PET gate granularities ------------------------------------------------------------------------------
def test_vlpet_gate_granularity():
    torch.manual_seed(0)
    h, x = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for gate in ("large", "middleX", "middleY", "small"):
        module = VLPETModule(8, 4, gate=gate, scale=1.0)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(std=0.5)  # away from sigmoid(0) so that the structure of G shows
            g = module(h, x) / module.modification(h)  # G = f(H, X) / (H + dH)
        varies_over_tokens = (g - g.mean(dim=1, keepdim=True)).abs().max() > 1e-4
        varies_over_channels = (g - g.mean(dim=2, keepdim=True)).abs().max() > 1e-4
        expected = {"large": (True, True), "middleX": (True, False), "middleY": (False, True), "small": (False, False)}
        assert (varies_over_tokens, varies_over_channels) == expected[gate], gate
        if gate == "middleY":  # G = 1 + z without a sigmoid (the code)
            torch.testing.assert_close(g[0, 0], 1 + module.gate)


def _gate_params(gate, w, r):
    return {"large": 2 * w * r + r + w, "middleX": w + 1, "middleY": w, "small": 2 * w + 1}[gate]


@pytest.mark.parametrize("gate", ["middleX", "middleY", "small"])
def test_vlpet_gate_options_train_on_tiny(gate):
    model = tuned_model("vlpet", gate=gate).train()
    l1_loss(model, random_batch(model)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    cfg, c = model.config, build_method("vlpet", {"gate": gate}).config
    expected = 0
    for branch, w, layers, r in (("vision", cfg.vision.d_model, cfg.vision.layers, c.rank_vision),
                                 ("language", cfg.language.hidden, cfg.language.layers, c.rank_language)):
        r = scaled(r, branch, cfg)
        expected += layers * (2 * (2 * w * r + r + w + _gate_params(gate, w, r)) + 2 * 2 * w)
    assert count_parameters(model)["encoder_side_trainable"] == expected


# ---- UniPT masks -----------------------------------------------------------------------------------------------
def test_unipt_output_at_real_tokens_ignores_padded_tokens():
    model = tuned_model("unipt").eval()
    seen = {}
    model.side.register_forward_hook(lambda mod, args, out: seen.update(vis=args[0], txt=args[1]))
    with torch.no_grad():
        model(*random_batch(model)[:4])
        for branch, out in (("vision", seen["vis"]), ("language", seen["txt"])):
            assert out.mask.any(), f"the batch should pad some {branch} tokens"
            net, states = getattr(model.side, branch), model.side.states(out)
            noisy = [s.masked_fill(out.mask.unsqueeze(-1), 0) + torch.randn_like(s) * out.mask.unsqueeze(-1)
                     for s in states]
            clean, perturbed = net(states, out.mask), net(noisy, out.mask)
            torch.testing.assert_close(perturbed[~out.mask], clean[~out.mask], rtol=1e-5, atol=1e-5)
            assert clean.shape == out.features.shape


# ---- counts at the paper preset (formulas, on a meta-device model) ------------------------------------------
def bottleneck_params(w, r):
    return 2 * w * r + r + w  # down (w->r) and up (r->w), with biases


def unipt_branch_params(layers, w, m, instance):
    down = w * m + m + 2 * m  # Linear(w -> m) + LN(m)
    if instance == "vse":  # every state h_0..h_N, projection Linear(m -> m) + LN, output ReLU -> Linear(m -> w)
        return (layers + 1) * down + (m + 1) + (m * m + m + 2 * m) + (m * w + w)
    # grounding: anchor + every second layer output from h_1; MLP m -> 2m -> m + LN; output Linear(m -> w) + LN(w)
    selected = len(range(1, layers, 2))
    return (1 + selected) * down + (m + 1) + (2 * m * m + 2 * m + 2 * m * m + m + 2 * m) + (m * w + w + 2 * w)


def expected_paper_count(name, c):
    cfg = PRESETS["paper"]
    d, lv, h, ll = cfg.vision.d_model, cfg.vision.layers, cfg.language.hidden, cfg.language.layers
    if name == "adapter":
        norms = (2 * lv * 2 * d + (2 * ll + 1) * 2 * h) if c.train_layer_norms else 0
        return (2 * lv * bottleneck_params(d, c.bottleneck_vision) + 2 * ll * bottleneck_params(h, c.bottleneck_language)
                + norms)
    if name == "lora":  # DETR: packed in_proj (d -> 3d) and out_proj (d -> d); BERT: query and value (h -> h)
        rv, rl = c.rank_vision, c.rank_language
        return lv * (rv * (d + 3 * d) + rv * (d + d)) + ll * 2 * rl * (h + h)
    if name == "vlpet":  # dH and G_large per sub-layer, plus the two LayerNorms of every layer
        return (lv * (2 * 2 * bottleneck_params(d, c.rank_vision) + 2 * 2 * d)
                + ll * (2 * 2 * bottleneck_params(h, c.rank_language) + 2 * 2 * h))
    if name == "bitfit":  # DETR: in_proj 3d, out_proj d, FFN f + d, two LN d; input projection d; BERT: q, k, v, o,
        f, ff = cfg.vision.ffn, cfg.language.intermediate  # intermediate, output, two LN; embedding LN
        return d + lv * (3 * d + d + f + d + 2 * d) + h + ll * (4 * h + ff + h + 2 * h)
    if name == "dara":  # DA (LN + bottleneck, no residual) per layer; vision RA: own down d -> 128, shared 128 -> d
        da = lambda w, b: 2 * w + bottleneck_params(w, b)  # noqa: E731
        text = ll // 2 * (da(h, c.bottleneck) + (h * 128 + 128 + 128 * (h - d) + h - d
                                                 if c.text_relation == "added" else 0))
        return lv * (da(d, c.bottleneck) + (d * 128 + 128) + (128 * d + d)) + text
    if name == "lst":  # per branch: side layers at width w // r, down_0 + one down per layer, gates, up
        r = c.reduction

        def ladder(w, n, ffn):
            s, m = w // r, ffn // r
            layer = 4 * s * s + 4 * s + 2 * s * m + m + s + 4 * s  # q, k, v, o; FFN; two LayerNorms
            return n * layer + (n + 1) * (w * s + s) + n + s * w + w
        return ladder(d, lv, cfg.vision.ffn) + ladder(h, ll, cfg.language.intermediate)
    if name == "unipt":
        return (unipt_branch_params(lv, d, c.width_vision, c.instance)
                + unipt_branch_params(ll, h, c.width_language, c.instance))
    raise KeyError(name)


@pytest.mark.parametrize("name, options", [("adapter", {}), ("lora", {}), ("vlpet", {}), ("unipt", {}),
                                           ("bitfit", {}), ("dara", {}), ("dara", {"text_relation": "added"}),
                                           ("lst", {}), ("lst", {"reduction": 4}),
                                           ("adapter", {"train_layer_norms": False}),
                                           ("vlpet", {"rank_language": 96, "rank_vision": 32}),
                                           ("unipt", {"instance": "vse", "width_language": 256}),
                                           ("unipt", {"width_language": 128})])
def test_paper_encoder_side_count(name, options):
    method = build_method(name, options)
    with torch.device("meta"):
        model = build_model("paper")
        apply_method(method, model)
    counted = count_parameters(model)["encoder_side_trainable"]
    assert counted == expected_paper_count(name, method.config)
    if name == "dara":  # the released code's own count (train.py L191): + the discarded text RA path (986,880)
        assert counted + (0 if options else 6 * (768 * 128 + 128 + 128 * 512 + 512)) + 6 * 512 == 1_600_704
    if not options and name not in ("bitfit", "dara"):  # budget-matched to M2IST's 3.19M tunable parameters
        assert 2.5e6 < counted < 3.5e6


# ---- UniPT instances ------------------------------------------------------------------------------------------
def test_unipt_grounding_reads_the_selected_layers_and_the_anchor_only():
    """MDETR's instance: [h_0 (input), h_1, ..., h_{N-1}] with select_layers, the final output h_N as anchor;
    the VSE instance reads every state, the input included."""
    for instance, read in (("grounding", {1, 3, 4}), ("vse", {0, 1, 2, 3, 4})):  # tiny language: 4 layers
        model = tuned_model("unipt", instance=instance).eval()
        net = model.side.language
        g = torch.Generator().manual_seed(0)
        states = [torch.randn(2, 5, model.config.language.hidden, generator=g) for _ in range(5)]
        pad = torch.zeros(2, 5, dtype=torch.bool)
        with torch.no_grad():
            base = net(states, pad)
            for i in range(5):
                moved = [s + 1.0 if j == i else s for j, s in enumerate(states)]
                changed = not torch.allclose(net(moved, pad), base)
                assert changed == (i in read), (instance, i)


def test_unipt_paper_counts_quoted_in_the_yaml():
    counts = {}
    for key, options in (("grounding", {}), ("vse_256", {"instance": "vse", "width_language": 256})):
        with torch.device("meta"):
            model = build_model("paper")
            apply_method(build_method("unipt", options), model)
        counts[key] = count_parameters(model)["encoder_side_trainable"]
    assert counts == {"grounding": 3_194_242, "vse_256": 3_111_810}


@pytest.mark.parametrize("name", SIDE)
@pytest.mark.parametrize("join", ["replace", "add"])
def test_side_output_joins_the_fusion_as_configured(name, join):
    """Default `replace` = MDETR transformer.py L341 (UniPT) and LST's merge_last false: the fusion receives the side
    output in place of each branch's frozen final features; `add` puts the output on top of them."""
    model = tuned_model(name, **({} if join == "replace" else {"join": join})).eval()
    assert build_method(name).config.join == "replace"
    seen = {}
    model.side.register_forward_hook(lambda mod, args, out: seen.update(vis=args[0], txt=args[1], out=out))
    fused = {}
    model.visu_proj.register_forward_hook(lambda mod, args, out: fused.update(vis=args[0]))
    model.text_proj.register_forward_hook(lambda mod, args, out: fused.update(txt=args[0]))
    with torch.no_grad():
        model(*random_batch(model)[:4])
    for i, branch in enumerate(("vis", "txt")):
        frozen, side = seen[branch].features, seen["out"][i]
        assert torch.equal(fused[branch], side if join == "replace" else frozen + side)


# ---- checkpoints ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_a_saved_checkpoint_evaluates_to_the_same_boxes(name, tmp_path):
    """What `harness run` saves (best.pth: state dict + model and method description) rebuilds, through the eval
    path, the model that gives the same boxes: trained values of every trainable parameter included."""
    from dataclasses import asdict

    from harness.checkpoint_eval import load_checkpoint_for_eval
    from harness.run import save_atomic

    model = tuned_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # as if trained: no parameter left at its initial (often zero) value
                p.add_(torch.randn_like(p) * 0.05)
    meta = {"method": name, "method_config": asdict(build_method(name).config),
            "model_config": model.config.to_dict(), "tokenizer": None, "data": "synthetic", "data_desc": {}}
    save_atomic({"model": model.state_dict(), "meta": meta}, tmp_path / "best.pth")
    loaded, _ = load_checkpoint_for_eval(tmp_path / "best.pth")
    batch = random_batch(model)[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(*batch), model(*batch), rtol=0, atol=0)
