"""Ladder Side-Tuning: a reduced-width copy of each frozen encoder, fed by gated down-projections of its layers.

Paper: Y.-L. Sung, J. Cho, M. Bansal, "LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer
Learning", NeurIPS 2022 (arXiv 2206.06522). Released code: github:ylsung/Ladder-Side-Tuning @1798e82; line numbers
below are of that commit (T5: seq2seq/third_party/models/t5/modeling_side_t5.py; BERT: CLIP-ViL/src/lxrt/
modeling.py; pruning: seq2seq/pruning/pruning_methods.py).

As the released code builds it, per encoder:
- the side network is the backbone's own layer class with the widths divided by r (d_model, FFN; the head count
  unchanged: modeling_side_t5.py L860-880, CLIP-ViL modeling.py L645-666), one side layer per backbone layer
  (VL-T5's and CLIP-ViL's default; the T5 GLUE script drops layers 0, 4, 8), the backbone's dropout;
- ladder (L884-900, L1214-1243): s_0 = down_0(encoder input); before side layer i,
  s = g_i * s + (1 - g_i) * down_i(backbone layer i output), g_i = sigmoid(alpha_i / T), alpha_i = 0, T = 0.1;
  the projections are fresh linears with biases (`add_bias_sampling` in the scripts), N(0, 0.02) weights and
  zero biases (BERT's init_bert_weights, CLIP-ViL modeling.py L1015-1023; T5 uses 0.01);
- the up-projected last side state REPLACES the backbone's output (`merge_last` false, training_args.py L122;
  L2030-2038; CLIP-ViL L822), so `join: replace` (the default; `add` puts it on the frozen output instead);
- the backbone is frozen and never records a graph (no parameter of it requires grad); here it runs under
  torch.no_grad() (`encoders_need_grad` False): the same, said to the model, so the frozen activations are freed;
- initialisation (`init: prune`): the side layers' weights are the backbone layers' weights, structurally pruned to
  1/r of their rows as `pruning_without_residual` (version 2, pruning_methods.py L394-562) does with the weights
  themselves as importance (the `t5-base-v2` flag; the Fisher variant needs task gradients before training, which
  a method applied to a built model does not have). Down the chain of each layer, a matrix's input columns follow
  the rows its predecessor kept, and it keeps the rows with the largest L1 norm (L1Strategy), q, k and v sharing
  one choice ranked by the product of the three; LayerNorms take the rows of the matrix before them; the first
  choice comes from the encoder's input (DETR: input_proj's output channels; BERT: the word-embedding dimensions,
  as T5's `shared.weight`). `init: random` = the layers' own init (the released BERT script passes no pruning
  flag, CLIP-ViL side_transformers.sh).

Adapted to this model (LST was shown on T5, BART, VL-T5 and CLIP-ViL; the grounding adaptation is ours):
- one ladder per branch (DETR encoder and BERT), each reading its branch's input and every layer output, its
  up-projected output handed to visu_proj / text_proj;
- DETR's side layers need a position embedding at the side width: DETR's own sine embedding computed at that
  width (the backbone's is a function, not a weight LST could prune);
- the magnitude rule above for both branches (LST's BERT pruning sums log-Fisher importances, which is undefined
  on signed weights; its released BERT runs use random init).
Tunable at the paper preset with r = 8: 192,166 (vision) + 2,376,300 (language) = 2,568,466 (`harness methods`).
Rate: LST's own 3e-3 for the side network (the T5 and VL-T5 scripts; lst.yaml), as every method gets its published
rate before the sweep selects one on val.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertLayer

from harness.errors import HarnessError
from harness.model.transformer import EncoderLayer, PositionEmbeddingSine
from methods import register
from methods.base import Method, MethodConfig, freeze_encoders

INITS = ("prune", "random")
JOINS = ("replace", "add")


@dataclass
class LSTConfig(MethodConfig):
    reduction: int = 8  # r: side widths = backbone widths // r (the T5 and BART scripts; CLIP-ViL SideConfig)
    init: str = "prune"  # prune (the backbone's weights, magnitude-pruned) | random
    gate_alpha: float = 0.0  # alpha_i at init: g = sigmoid(0) = 0.5 (training_args.py L93-95)
    gate_temperature: float = 0.1  # T
    join: str = "replace"  # replace (merge_last false) | add

    def __post_init__(self):
        if self.reduction < 1:
            raise ValueError("reduction must be >= 1")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.join not in JOINS:
            raise ValueError(f"join must be one of {', '.join(JOINS)}, not {self.join!r}")
        if self.gate_temperature <= 0:
            raise ValueError("gate_temperature must be > 0")


class Ladder(nn.Module):
    """s = down_0(input); for each layer i: s = g_i s + (1 - g_i) down_i(h_i); s = side_i(s); output up(s)."""

    def __init__(self, width: int, side_width: int, layers: nn.ModuleList, alpha: float, temperature: float,
                 std: float):
        super().__init__()
        self.first_downsample = nn.Linear(width, side_width)
        self.downsamples = nn.ModuleList(nn.Linear(width, side_width) for _ in layers)
        self.gates = nn.Parameter(torch.full((len(layers),), float(alpha)))
        self.temperature = temperature
        self.layers = layers
        self.upsample = nn.Linear(side_width, width)
        for linear in (self.first_downsample, *self.downsamples, self.upsample):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def run(self, out, layer_call):
        s = self.first_downsample(out.inputs)
        gates = torch.sigmoid(self.gates / self.temperature)
        for i, (layer, tap) in enumerate(zip(self.layers, out.taps)):
            s = gates[i] * s + (1 - gates[i]) * self.downsamples[i](tap["out"])
            s = layer_call(layer, s)
        return self.upsample(s)


class VisionLadder(Ladder):
    def __init__(self, cfg, r: int, alpha: float, temperature: float, std: float):
        side = cfg.d_model // r
        super().__init__(cfg.d_model, side, nn.ModuleList(
            EncoderLayer(side, cfg.heads, cfg.ffn // r, cfg.dropout) for _ in range(cfg.layers)), alpha, temperature,
            std)
        for p in self.layers.parameters():  # DETR's init of what is not pruned from the backbone (_reset_parameters)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.position = PositionEmbeddingSine(side // 2)

    def forward(self, out):
        n = out.mask.shape[1]
        grid = math.isqrt(n)  # the padded input is square: a grid x grid map of visual tokens
        pos = self.position(out.mask.view(-1, grid, grid)).to(out.inputs.dtype).flatten(2).transpose(1, 2)
        return self.run(out, lambda layer, s: layer(s, pos, out.mask))


class LanguageLadder(Ladder):
    def __init__(self, bert_config, r: int, alpha: float, temperature: float):
        side = copy.deepcopy(bert_config)
        side.hidden_size //= r
        side.intermediate_size //= r
        side._attn_implementation = bert_config._attn_implementation or "sdpa"
        self.side_config = side
        super().__init__(bert_config.hidden_size, side.hidden_size,
                         nn.ModuleList(BertLayer(side) for _ in range(bert_config.num_hidden_layers)), alpha,
                         temperature, bert_config.initializer_range)
        for layer in self.layers:  # BERT's own init for what is not pruned from the backbone
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=bert_config.initializer_range)
                    nn.init.zeros_(m.bias)

    def set_eager_attention(self, eager: bool) -> None:
        self.side_config._attn_implementation = "eager" if eager else "sdpa"

    def forward(self, out):
        extended = out.mask[:, None, None, :].to(out.inputs.dtype) * torch.finfo(out.inputs.dtype).min
        return self.run(out, lambda layer, s: layer(s, attention_mask=extended))


class LSTSide(nn.Module):
    """The model's side seam: (vision ladder output, language ladder output), replacing or added to the branches'
    final features (`join`, read by TransVG.join)."""

    tap_names = {"vision": {"out"}, "language": {"out"}}

    def __init__(self, vision: VisionLadder, language: LanguageLadder, join: str):
        super().__init__()
        self.vision, self.language, self.join = vision, language, join

    def set_eager_attention(self, eager: bool) -> None:
        for layer in self.vision.layers:
            layer.eager_attention = eager
        self.language.set_eager_attention(eager)

    def forward(self, vision_out, language_out):
        return self.vision(vision_out), self.language(language_out)


# ---- initialisation by structured pruning (pruning_without_residual, version 2, magnitude importance) ----------
def keep_rows(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """LST's L1Strategy: drop the rows with the smallest L1 norm; the kept indices in their original order."""
    norms = importance.reshape(importance.shape[0], -1).abs().sum(1)
    dropped = torch.argsort(norms, stable=True)[:importance.shape[0] - keep]
    kept = torch.ones(importance.shape[0], dtype=torch.bool, device=importance.device)
    kept[dropped] = False
    return kept.nonzero().squeeze(1)


def _prune(weights: list, biases: list, cols: torch.Tensor, keep: int):
    """Matrices read the columns their predecessor kept; one row choice by the product of their weights."""
    weights = [w[:, cols] for w in weights]
    product = weights[0]
    for w in weights[1:]:
        product = product * w
    rows = keep_rows(product, keep)
    return [w[rows] for w in weights], [b[rows] for b in biases], rows


def _norm(side: nn.LayerNorm, full: nn.LayerNorm, rows) -> None:
    side.weight.copy_(full.weight[rows])
    side.bias.copy_(full.bias[rows])


def _linear(side: nn.Linear, weight, bias) -> None:
    side.weight.copy_(weight)
    side.bias.copy_(bias)


def _prune_chain(rows, chain):
    """Each (side linear, backbone linear, (side LayerNorm, backbone LayerNorm) or None) in order: the linear reads
    the columns its predecessor kept and keeps rows of its own; a LayerNorm after it takes those rows."""
    for side_linear, full_linear, norms in chain:
        (w,), (b,), rows = _prune([full_linear.weight], [full_linear.bias], rows, side_linear.out_features)
        _linear(side_linear, w, b)
        if norms is not None:
            _norm(*norms, rows)
    return rows


@torch.no_grad()
def prune_vision(ladder: VisionLadder, visumodel) -> None:
    proj = visumodel.input_proj.weight
    rows = keep_rows(proj.reshape(proj.shape[0], -1), ladder.upsample.in_features)
    for side, full in zip(ladder.layers, visumodel.encoder.layers):
        s, d = side.self_attn.embed_dim, full.self_attn.embed_dim
        w, b = full.self_attn.in_proj_weight, full.self_attn.in_proj_bias
        (q, k, v), (bq, bk, bv), rows = _prune([w[:d], w[d:2 * d], w[2 * d:]], [b[:d], b[d:2 * d], b[2 * d:]], rows, s)
        side.self_attn.in_proj_weight.copy_(torch.cat([q, k, v]))
        side.self_attn.in_proj_bias.copy_(torch.cat([bq, bk, bv]))
        rows = _prune_chain(rows, ((side.self_attn.out_proj, full.self_attn.out_proj, (side.norm1, full.norm1)),
                                   (side.linear1, full.linear1, None),
                                   (side.linear2, full.linear2, (side.norm2, full.norm2))))


@torch.no_grad()
def prune_language(ladder: LanguageLadder, bert) -> None:
    rows = keep_rows(bert.embeddings.word_embeddings.weight.T, ladder.upsample.in_features)
    for side, full in zip(ladder.layers, bert.encoder.layer):
        s = side.attention.self.query.out_features
        sa, fa = side.attention.self, full.attention.self
        weights, biases, rows = _prune([fa.query.weight, fa.key.weight, fa.value.weight],
                                       [fa.query.bias, fa.key.bias, fa.value.bias], rows, s)
        for linear, w, b in zip((sa.query, sa.key, sa.value), weights, biases):
            _linear(linear, w, b)
        rows = _prune_chain(rows, (
            (side.attention.output.dense, full.attention.output.dense,
             (side.attention.output.LayerNorm, full.attention.output.LayerNorm)),
            (side.intermediate.dense, full.intermediate.dense, None),
            (side.output.dense, full.output.dense, (side.output.LayerNorm, full.output.LayerNorm))))


@register
class LST(Method):
    name = "lst"
    summary = "Ladder Side-Tuning: a 1/r-width side copy of each encoder on gated down-projections; no encoder autograd"
    Config = LSTConfig

    @property
    def encoders_need_grad(self) -> bool:
        return False

    def apply(self, model) -> None:
        c, cfg = self.config, model.config
        for branch, width, heads in (("vision", cfg.vision.d_model, cfg.vision.heads),
                                     ("language", cfg.language.hidden, cfg.language.heads)):
            side = width // c.reduction
            if side < heads or side % heads or side % 2:
                raise HarnessError(f"LST reduction {c.reduction} gives the {branch} side network width {side} at "
                                   f"preset '{cfg.name}', which its {heads} heads (and the sine position embedding) "
                                   "cannot split evenly; choose a smaller reduction")
        if model.side is not None:
            raise HarnessError("LST: the model already carries a side network; apply one method to a freshly "
                               "built model")
        freeze_encoders(model)
        bert = model.textmodel.bert
        ladders = LSTSide(VisionLadder(cfg.vision, c.reduction, c.gate_alpha, c.gate_temperature,
                                       bert.config.initializer_range),
                          LanguageLadder(bert.config, c.reduction, c.gate_alpha, c.gate_temperature), c.join)
        ref = model.visu_proj.weight
        ladders.to(device=ref.device, dtype=ref.dtype)
        if c.init == "prune" and not ref.is_meta:  # a meta model (parameter counting) has no weights to prune
            prune_vision(ladders.vision, model.visumodel)
            prune_language(ladders.language, bert)
        model.side = ladders.requires_grad_(True)
