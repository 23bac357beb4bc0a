"""Language branch: transformers' BertModel (no pooler: TransVG never reads it) with the same seams as the
DETR encoder layers: adapter slots on both sub-layer outputs, a parallel seam beside each, per-layer taps, and a switch for the token-type
embedding (`token_type_embedding`).

The slots live in subclasses of BertSelfOutput / BertOutput that keep the parent's children (`dense`,
`LayerNorm`, `dropout`), so HF and TransVG key names are unchanged and pretrained weights load as usual.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOutput, BertSelfOutput

from harness.model.config import LanguageConfig
from harness.model.vision import BranchOutput


class _SlottedOutput(nn.Module):
    """Shared forward of a BERT sub-layer output: H = dense(h); H' = adapter(H, X); LN(drop(H') + X [+ g(X)]),
    with g = `parallel` (a module on the sub-layer's input joining the residual sum outside the dropout, as the
    DETR layers' `ffn_parallel`)."""

    adapter: nn.Module | None
    parallel: nn.Module | None
    tap_names: tuple  # (sub-layer output before the adapter, result after add & norm)

    def forward(self, hidden_states, input_tensor):
        h = self.dense(hidden_states)
        adapted = h if self.adapter is None else self.adapter(h, input_tensor)
        residual = self.dropout(adapted) + input_tensor
        out = self.LayerNorm(residual if self.parallel is None else residual + self.parallel(input_tensor))
        if self.sink is not None:
            raw, post = self.tap_names
            if raw == "attn":
                self.sink["x"] = input_tensor
            self.sink[raw] = h
            self.sink[post] = out
        return out


class SlottedSelfOutput(_SlottedOutput, BertSelfOutput):
    tap_names = ("attn", "attn_out")

    def __init__(self, config):
        BertSelfOutput.__init__(self, config)
        self.adapter = self.parallel = None
        self.sink = None


class SlottedOutput(_SlottedOutput, BertOutput):
    tap_names = ("ffn", "out")

    def __init__(self, config):
        BertOutput.__init__(self, config)
        self.adapter = self.parallel = None
        self.sink = None


class Embeddings(BertEmbeddings):
    """BERT's embeddings, LN(word + token type + position), with the token-type term optional: BLIP's med.py
    (the BERT of the released M2IST code, xuyang-liu16/M2IST @bd50919 models/language_model/med.py L57-99) has no
    token-type embedding and computes LN(word + position). With `add_token_type` False the weight stays, unused, so
    state dicts and parameter counts do not change."""

    def __init__(self, config):
        super().__init__(config)
        self.add_token_type = True

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, **kwargs):
        if self.add_token_type:
            return super().forward(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = self.position_ids[:, :inputs_embeds.shape[1]]
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)))


def bert_config(cfg: LanguageConfig) -> BertConfig:
    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                      max_position_embeddings=cfg.max_positions, hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout)


class LanguageBranch(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        config = bert_config(cfg)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.bert.embeddings = Embeddings(config)
        for layer in self.bert.encoder.layer:
            layer.attention.output = SlottedSelfOutput(config)
            layer.output = SlottedOutput(config)
        self.bert.apply(self.bert._init_weights)  # the replaced modules get BERT's init too

    @property
    def token_type_embedding(self) -> bool:
        """Whether the embedding output includes BERT's token-type row (TransVG's BERT: yes; BLIP's med.py: no)."""
        return self.bert.embeddings.add_token_type

    @token_type_embedding.setter
    def token_type_embedding(self, on: bool) -> None:
        self.bert.embeddings.add_token_type = bool(on)

    @property
    def layers(self):
        return self.bert.encoder.layer

    def set_eager_attention(self, eager: bool):
        self.bert.set_attn_implementation("eager" if eager else "sdpa")

    def forward(self, word_ids, word_mask, tap_names=None) -> BranchOutput:
        """`tap_names`: the taps to record per layer (None: none)."""
        taps = [dict() for _ in self.layers] if tap_names is not None else None
        for i, layer in enumerate(self.layers):
            layer.attention.output.sink = layer.output.sink = taps[i] if taps else None
        first = taps[0] if taps else {}
        self.layers[0].attention.output.sink = first  # always catch the embedding output (layer 0's input)
        try:
            hidden = self.bert(input_ids=word_ids, attention_mask=word_mask).last_hidden_state
        finally:
            for layer in self.layers:
                layer.attention.output.sink = layer.output.sink = None
        inputs = first["x"]
        if taps is not None:
            taps = [{k: v for k, v in t.items() if k in tap_names} for t in taps]
        return BranchOutput(hidden, ~word_mask.to(torch.bool), inputs, taps)
