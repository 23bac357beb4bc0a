"""M2IST: Multi-Modal Interactive Side-Tuning (Liu, Liu et al., arXiv 2407.01131, IEEE TCSVT 2025), as the
released code wires it (github.com/xuyang-liu16/M2IST @bd50919, models/trans_vg_lt.py, models/adapter.py,
models/visual_model/transformer.py, models/language_model/med.py, train.py). Facts and the paper-vs-code
differences are in reference/m2ist.md (sections 1.2-1.4 and 4).

M3ISA (Mixture of Multi-Modal Interactive Side-Adapters), with d = vision width, h = language width and
b = bottleneck (paper: d 256, h 768, b 128):
- vision, DETR layers 0..Nv-1 (default all 6):
    t_i = IEA_i(ReLU(vis_downsample_mha_i(attn_i)))            d->b (layer-specific) -> shared b->d, no scale
    v_i = VEA_i(ffn_i) = 0.1 * up(ReLU(down(LN_in(ffn_i))))    LN(d) -> d->b -> ReLU -> b->d
  attn_i / ffn_i are the self-attention and FFN sub-layer outputs before dropout + residual + LayerNorm.
- language, BERT layers 0..Nl-1 (default the first half: 6 of 12):
    dd  = ReLU(text_downsample_i(h1_i))                         h->b; h1_i = post-attention LayerNorm output
    m_i = LN_att_i(cat[text_upsample_i(dd) (b->h-d), IEA_i(dd) (b->d)])   then the layer's FROZEN attention LN
    l_i = LN_out_i(LEA_i(ffn_i))                                LEA = LN(h) -> h->b -> ReLU -> b->h, x0.1; then
                                                                the layer's FROZEN output LN
- IEA_i (inter-modality adapter, `ShareAdapter`) is ONE Linear(b->d) per index i used by vision layer i AND
  language layer i: the same Parameter objects, counted once. There are max(Nv, Nl) of them.
- mixing (trans_vg_lt.py forward): vision delta = sum_i (t_i + v_i) + input_src (flattened input_proj(C5),
  no position embedding = `BranchOutput.inputs`); language delta = sum_i (m_i + l_i) + embedding output. Each
  delta is added to its branch's final encoder output before visu_proj / text_proj (the model's `side` seam).

Insertion forms (`form`; the paper's Fig. 3 comparison; the adapters and their parameters are identical in
all three, only where they read and write differs):
- side (default, the released code): every adapter reads a tap of the frozen encoders and writes only into
  the side sums above. The encoders run under torch.no_grad() (`encoders_need_grad` False): none of their
  activations is kept and no gradient crosses them; the module sits at `model.side` (parameters `side.*`).
- parallel: the adapter of a sub-layer reads that sub-layer's INPUT X and its output is added to the sub-layer
  output H in the layer's adapter slot: H' = H + A(X), then the layer's own dropout + residual + LayerNorm.
  X is the layer input for the attention sub-layer and the post-attention LayerNorm output for the FFN.
- sequential: the adapter reads the sub-layer OUTPUT H: H' = H + A(H), then dropout + residual + LayerNorm.
  In both inline forms A is the M3ISA piece of that sub-layer (vision: IEA_i o ReLU o down_i and VEA_i;
  language: LN_att_i(cat[up_i, IEA_i]) o ReLU o down_i and LN_out_i o LEA_i), there is no side sum (no
  `model.side`, no input-feature delta), the adapter modules are registered in the encoders' slots (the shared
  IEA_i under both, yielded once by named_parameters), and `encoders_need_grad` is True: the adapters'
  gradients flow back through the frozen layers above them.

Init (what the released code effectively ends up with, reference/m2ist.md 1.2 "Scaling factors and init",
4.8): vision adapters (vis_downsample_mha, VEA down/up) get DETR's xavier_uniform_ weights (its
_reset_parameters runs after they are built) and keep the explicit U(0, 1) biases; the language adapters
(text_downsample, text_upsample, LEA down/up) and the shared IEA (registered inside BERT too, so HF
_init_weights hits it when from_pretrained finds no key for it) get HF's init: weights N(0, 0.02)
(`initializer_range` of the BERT config), zero biases; every adapter LayerNorm is (1, 0).

Adaptations and why:
- Only modules the forward uses are built. The released code also creates `video_key_adapter` /
  `video_value_adapter` (198,274 params, via configs/retrieval_flickr.yaml) and `adapter_layer_norm_cross_modal`
  LayerNorms (12,288), trainable but unused; so the tunable count here is 2,975,232, not the paper's 3.19M
  (3,185,794 in the code). The always-trained fusion + head are 8,393,732 at L = 20, as the code.
- BERT is transformers' BertModel loaded from bert-base-uncased, as TransVG's, not BLIP's med.py class; its 12
  unused random cross-attention blocks (28.4M frozen parameters) are not built. The embedding is med.py's
  (L57-99): LN(word + position), no token-type term (`token_type_embedding: false`, the default): with real
  bert-base weights the token-type row 0 shifts every BERT state, so adding it would not be the released
  forward. BERT's token-type weight stays in the model, frozen and unused, so `harness methods` counts the
  same total as TransVG's BERT. `true` is the variant this project ran before (TransVG's BERT embedding,
  LN(word + position + token type 0)); the embedding output added to the language delta follows the option.
- The released code's double LayerNorm in the adapted BERT layers (BertSelfOutput returns
  LN_att(LN_att(drop(H) + X) + X) there, while the side reads the single-LN h1) changes the frozen forward.
  It produced the paper's numbers, so `double_layernorm: true` is the default (exact, dropout included: the
  slot applies the layer's own dropout once and the second LayerNorm gets no dropout, as the code); `false` is
  a documented variant that leaves the frozen BERT forward untouched. With both released defaults the released
  model and this one agree to 2.2e-16 in float64 (reference/review-round3.md, where BERT's token-type row had to
  be zeroed by hand; tests/test_m2ist_released.py restates the released forward layer by layer and checks the
  same, with a non-zero token-type row that the default must ignore).
- Variants (issue 28, item 5; the defaults are the released computation, methods/m2ist.yaml): `text_side_norms:
  false` leaves out the frozen LN_att / LN_out the code applies to the language side terms, `side_terms: false`
  keeps only the encoder inputs in the deltas (the adapters take no part), `input_features: false` keeps only the
  side sums. tests/test_m2ist.py restates each against the hand computation.
- Dimensions are the paper's at `paper` and derived elsewhere: b = round(bottleneck * d / 256), the language
  up-projection is h - d wide so [up || IEA] is h wide (a HarnessError when h <= d).
- Learning rates as the code: adapters (the shared IEA included) at recipe `lr_encoder` 1e-5, fusion and head
  at `lr` 1e-4, AdamW weight decay 1e-4 (methods/m2ist.yaml).
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

FORMS = ("side", "parallel", "sequential")
PAPER_VISION_WIDTH = 256  # the width the paper's bottleneck (128) refers to
ADAPTER_SCALE = 0.1  # models/adapter.py adapter_scalar="0.1" (Adapter_vis, Adapter_text)
# Tap key under which the double-LN slot stores the single-LN h1 of an adapted BERT layer (the side reads it).
H1_TAP = "m2ist_h1"


@dataclass
class M2ISTConfig(MethodConfig):
    form: str = "side"
    bottleneck: int = 128  # at vision width 256; scaled by d_vision / 256 elsewhere
    vision_layers: Optional[int] = None  # None = all DETR layers
    language_layers: Optional[int] = None  # None = the first half of the BERT layers
    double_layernorm: bool = True
    token_type_embedding: bool = False  # med.py's embedding has none; true = TransVG's BERT embedding
    # Variants that take the released side computation apart (issue 28, item 5; the defaults are the released code):
    text_side_norms: bool = True  # the language side terms through the layer's frozen LN_att / LN_out
    side_terms: bool = True  # the adapters' sums in the deltas (side form); false = the encoder inputs alone
    input_features: bool = True  # input_src / the embedding output in the deltas (side form)

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"bottleneck must be an integer >= 1, got {self.bottleneck!r}")
        for key in ("vision_layers", "language_layers"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{key} must be null or an integer >= 0, got {v!r}")
        for key in ("double_layernorm", "token_type_embedding", "text_side_norms", "side_terms", "input_features"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.form != "side" and not (self.side_terms and self.input_features):
            raise ValueError("side_terms and input_features choose what the side form's deltas hold; the inline "
                             f"forms have no side sum (form {self.form!r}): leave both true")


# ---- the adapter pieces ---------------------------------------------------------------------------------
class IntraAdapter(nn.Module):
    """VEA / LEA (`Adapter_vis` / `Adapter_text`): scale * up(ReLU(down(LN(z)))), dropout p = 0; the language
    one is followed by the layer's frozen output LayerNorm, held by reference (not registered here)."""

    def __init__(self, dim: int, bottleneck: int, out_norm: nn.LayerNorm | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = ADAPTER_SCALE
        self._frozen = (out_norm,)  # a tuple: nn.Module does not register what it holds

    def forward(self, z):
        y = self.scale * self.up(F.relu(self.down(self.norm(z))))
        out_norm = self._frozen[0]
        return y if out_norm is None else out_norm(y)


class VisionInteractive(nn.Module):
    """Vision MHA branch: shared IEA_i(ReLU(vis_downsample_mha_i(z)))."""

    def __init__(self, d: int, bottleneck: int, iea: nn.Linear):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.iea = iea  # shared with the language branch (tied, like tied embeddings)

    def forward(self, z):
        return self.iea(F.relu(self.down(z)))


class LanguageInteractive(nn.Module):
    """Language MHA branch: LN_att_i(cat[text_upsample_i(dd), IEA_i(dd)]), dd = ReLU(text_downsample_i(z));
    LN_att_i is the layer's frozen attention LayerNorm, held by reference."""

    def __init__(self, h: int, d: int, bottleneck: int, iea: nn.Linear, att_norm: nn.LayerNorm | None):
        super().__init__()
        self.down = nn.Linear(h, bottleneck)
        self.up = nn.Linear(bottleneck, h - d)
        self.iea = iea
        self._frozen = (att_norm,)

    def forward(self, z):
        dd = F.relu(self.down(z))
        out = torch.cat([self.up(dd), self.iea(dd)], dim=-1)
        return out if self._frozen[0] is None else self._frozen[0](out)


class M3ISA(nn.Module):
    """All M2IST parameters; in the side form it is `model.side` and its forward gives the two deltas."""

    def __init__(self, d: int, h: int, bottleneck: int, vision_layers: int, language_layers,
                 text_side_norms: bool = True, side_terms: bool = True, input_features: bool = True):
        super().__init__()
        # language_layers: the adapted BERT layers (their frozen LayerNorms are referenced, not registered)
        self.side_terms, self.input_features = side_terms, input_features
        n_shared = max(vision_layers, len(language_layers))
        self.iea = nn.ModuleList(nn.Linear(bottleneck, d) for _ in range(n_shared))  # registered first: canonical names
        self.vis_mha = nn.ModuleList(VisionInteractive(d, bottleneck, self.iea[i]) for i in range(vision_layers))
        self.vea = nn.ModuleList(IntraAdapter(d, bottleneck) for _ in range(vision_layers))
        self.txt_mha = nn.ModuleList(
            LanguageInteractive(h, d, bottleneck, self.iea[i], layer.attention.output.LayerNorm if text_side_norms
                                else None) for i, layer in enumerate(language_layers))
        self.lea = nn.ModuleList(IntraAdapter(h, bottleneck, layer.output.LayerNorm if text_side_norms else None)
                                 for layer in language_layers)
        self.h1_tap = "attn_out"  # H1_TAP when the double LayerNorm moves the main path off h1

    def reset_parameters(self, std: float):
        vision = [m.down for m in self.vis_mha] + [l for a in self.vea for l in (a.down, a.up)]
        language = list(self.iea) + [l for m in self.txt_mha for l in (m.down, m.up)] + \
            [l for a in self.lea for l in (a.down, a.up)]
        with torch.no_grad():
            for lin in vision:  # explicit init: bias U(0, 1); DETR _reset_parameters: xavier weights
                nn.init.xavier_uniform_(lin.weight)
                nn.init.uniform_(lin.bias)
            for lin in language:  # HF BertPreTrainedModel._init_weights
                nn.init.normal_(lin.weight, mean=0.0, std=std)
                nn.init.zeros_(lin.bias)
            for a in list(self.vea) + list(self.lea):
                nn.init.ones_(a.norm.weight)
                nn.init.zeros_(a.norm.bias)

    @property
    def tap_names(self) -> dict:
        return {"vision": {"attn", "ffn"}, "language": {self.h1_tap, "ffn"}}

    def forward(self, vis, txt):
        """(vision_delta, language_delta) from the frozen encoders' taps (side form)."""
        if vis.taps is None or txt.taps is None:
            raise HarnessError("M2IST side form needs the encoders' taps: the model records them when model.side is set")
        v = vis.inputs if self.input_features else torch.zeros_like(vis.inputs)
        t = txt.inputs if self.input_features else torch.zeros_like(txt.inputs)
        if self.side_terms:  # false: the adapters exist (and are counted) but take no part
            v = v + sum(self.vis_mha[i](x["attn"]) + self.vea[i](x["ffn"])
                        for i, x in enumerate(vis.taps[:len(self.vea)]))
            t = t + sum(self.txt_mha[i](x[self.h1_tap]) + self.lea[i](x["ffn"])
                        for i, x in enumerate(txt.taps[:len(self.lea)]))
        return v, t


class M2ISTSlot(nn.Module):
    """What M2IST puts in an encoder adapter slot f(H, X) -> H' (the inline forms and/or the double LN).

    - `adapter` with reads 'input' (parallel): H' = H + A(X); reads 'output' (sequential): H' = H + A(H).
    - `double_ln_of` (a BERT attention output module): reproduces BertSelfOutput of the released code,
      h1 = LN_att(drop(H') + X) (stored as tap H1_TAP), returned so that the module computes LN_att(h1 + X);
      the module's dropout is moved into this slot and an Identity left in its place (one dropout, as the code).
    """

    def __init__(self, adapter: nn.Module | None = None, reads: str | None = None, double_ln_of: nn.Module | None = None):
        super().__init__()
        self.adapter = adapter
        self.reads = reads
        self._owner = (double_ln_of,)
        if double_ln_of is not None:
            self.dropout = double_ln_of.dropout
            double_ln_of.dropout = nn.Identity()

    def forward(self, h, x):
        if self.adapter is not None:
            h = h + self.adapter(x if self.reads == "input" else h)
        owner = self._owner[0]
        if owner is None:
            return h
        h1 = owner.LayerNorm(self.dropout(h) + x)
        if owner.sink is not None:
            owner.sink[H1_TAP] = h1
        return h1


# ---- the method ---------------------------------------------------------------------------------------
def _dimensions(cfg: M2ISTConfig, model_cfg):
    d, h = model_cfg.vision.d_model, model_cfg.language.hidden
    b = round(cfg.bottleneck * d / PAPER_VISION_WIDTH)
    if b < 1:
        raise HarnessError(f"M2IST bottleneck {cfg.bottleneck} (at vision width {PAPER_VISION_WIDTH}) scales to "
                           f"{cfg.bottleneck * d / PAPER_VISION_WIDTH:g} < 1 at preset '{model_cfg.name}' (vision width "
                           f"{d}); raise `bottleneck`")
    if h <= d:
        raise HarnessError(f"M2IST needs the language width to exceed the vision width: the language up-projection "
                           f"is h - d wide so that [up || shared IEA (d)] is h wide, but preset '{model_cfg.name}' has "
                           f"h = {h}, d = {d}")
    n_vis = model_cfg.vision.layers if cfg.vision_layers is None else cfg.vision_layers
    n_txt = max(1, model_cfg.language.layers // 2) if cfg.language_layers is None else cfg.language_layers
    for key, n, avail in (("vision_layers", n_vis, model_cfg.vision.layers),
                          ("language_layers", n_txt, model_cfg.language.layers)):
        if n > avail:
            raise HarnessError(f"M2IST {key} = {n} but preset '{model_cfg.name}' has only {avail} such layers")
    return d, h, b, n_vis, n_txt


@register
class M2IST(Method):
    name = "m2ist"
    summary = "M2IST (M3ISA side adapters, shared IEA); encoders frozen, no autograd"
    Config = M2ISTConfig

    @property
    def encoders_need_grad(self) -> bool:
        return self.config.form != "side"

    def apply(self, model) -> None:
        cfg = self.config
        d, h, b, n_vis, n_txt = _dimensions(cfg, model.config)
        vis_layers, txt_layers = model.encoder_layers("vision"), model.encoder_layers("language")
        occupied = [i for i, l in enumerate(vis_layers) if l.attn_adapter is not None or l.ffn_adapter is not None] + \
            [i for i, l in enumerate(txt_layers) if l.attention.output.adapter is not None or l.output.adapter is not None]
        if model.side is not None or occupied:
            raise HarnessError("M2IST: the model already carries a side network or encoder adapters; apply one method "
                               "to a freshly built model")
        freeze_encoders(model)  # both encoders frozen (their LayerNorms included); fusion and head train
        model.textmodel.token_type_embedding = cfg.token_type_embedding
        ref = model.visu_proj.weight
        m3isa = M3ISA(d, h, b, n_vis, list(txt_layers)[:n_txt], cfg.text_side_norms, cfg.side_terms,
                      cfg.input_features)
        m3isa.reset_parameters(model.textmodel.bert.config.initializer_range)
        m3isa.to(device=ref.device, dtype=ref.dtype)
        m3isa.requires_grad_(True)

        reads = {"side": None, "parallel": "input", "sequential": "output"}[cfg.form]
        if cfg.form == "side":
            model.side = m3isa
        else:
            for i in range(n_vis):
                vis_layers[i].attn_adapter = M2ISTSlot(m3isa.vis_mha[i], reads)
                vis_layers[i].ffn_adapter = M2ISTSlot(m3isa.vea[i], reads)
            for i in range(n_txt):
                txt_layers[i].output.adapter = M2ISTSlot(m3isa.lea[i], reads)
        for i in range(n_txt):  # the language attention slot carries the inline adapter and/or the double LN
            adapter = None if cfg.form == "side" else m3isa.txt_mha[i]
            owner = txt_layers[i].attention.output if cfg.double_layernorm else None
            if adapter is not None or owner is not None:
                txt_layers[i].attention.output.adapter = M2ISTSlot(adapter, reads, owner)
        if cfg.double_layernorm:
            m3isa.h1_tap = H1_TAP
