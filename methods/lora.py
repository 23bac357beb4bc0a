"""LoRA in both frozen encoders, injected with Hugging Face peft.

Paper: E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022: a frozen weight
W gets a trainable low-rank update W + (alpha / r) * B A, A (r x in) random, B (out x r) zero, so the
tuned model equals the frozen one at initialisation. Implementation: peft's LoRA layers
(`peft.inject_adapter_in_model(LoraConfig(...), submodule)`), never hand-written.

Adapted to this model:
- language: `model.textmodel.bert` with target_modules ["query", "value"] (the LoRA paper's W_q, W_v
  choice and peft's default for BERT): 24 nn.Linear layers at the paper preset;
- vision: `model.visumodel.encoder` with target_modules ["self_attn"]: DETR's attention is an
  nn.MultiheadAttention with packed q/k/v weights, which peft (>= 0.15) wraps as a whole: one LoRA pair on
  the packed in_proj (A: r x d, B: 3d x r, so W_q, W_k and W_v are adapted jointly, with a shared A) and one
  on out_proj; peft offers no way to adapt W_q, W_v alone there. peft's wrapper merges the update into the
  weights before each attention call and subtracts it again after, so the frozen in_proj / out_proj
  weights are re-registered as new (frozen) Parameters on every call and pick up float rounding of
  (W + dW) - dW, far below anything training notices; their state-dict keys gain `base_layer.`, which is
  why weights are loaded before a method is applied. lora_dropout has no effect on this merged path, so
  it defaults to 0 everywhere;
- peft 0.21.x's wrapper (0.21.0 and 0.21.2 seen) adds the out_proj update twice in its forward (W + 2 dW; upstream PR
  huggingface/peft#3774). `apply` measures this on a 4-wide probe and, where it happens, halves the
  out_proj LoRA scale, so that the forward is exactly W + (alpha / r) B A as in LoRA. The second add is
  not tracked by autograd, so the out_proj factors then receive half their true gradient: same direction,
  and AdamW's update does not depend on the gradient's scale. With a fixed peft nothing is changed;
- injection is scoped to those two sub-modules, because peft marks everything else in the module it is
  given as frozen: the V-L fusion transformer (also nn.MultiheadAttention) and the head stay trainable
  and un-adapted;
- rank 64 in both branches at the paper preset: 2,359,296 (BERT) + 589,824 (DETR) = 2,949,120 encoder-side
  parameters, comparable to M2IST's 3.19M; scaled with the branch width on other presets (tiny: 5 for BERT,
  8 for DETR);
- `alpha` is peft's lora_alpha at the paper preset (the update enters as (alpha / r) B A); on other presets
  it scales with the rank, so each branch keeps the paper preset's alpha / r. Default null = alpha = r
  (scale 1). The LoRA authors' released scripts (microsoft/LoRA @c4593f0) use r 8 with alpha 16, i.e.
  alpha = 2r: `--set method.alpha=128` at rank 64;
- gradients flow through the frozen encoders to the LoRA factors, so the encoders run with autograd.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional
from functools import lru_cache

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import MultiheadAttention as LoraMultiheadAttention
from torch import nn

from harness.errors import HarnessError
from methods import register
from methods.base import Method, MethodConfig, freeze_encoders
from methods.modules import scaled


@dataclass
class LoRAConfig(MethodConfig):
    rank_vision: int = 64  # at DETR d = 256; scaled with the width on other presets
    rank_language: int = 64  # at BERT h = 768
    alpha: Optional[float] = None  # peft lora_alpha at the paper preset; None = the rank (scale alpha / r = 1)
    dropout: float = 0.0
    targets_vision: list = field(default_factory=lambda: ["self_attn"])
    targets_language: list = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self):
        if min(self.rank_vision, self.rank_language) < 1:
            raise ValueError("LoRA ranks must be positive")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be positive (or null for alpha = r), got {self.alpha}")


@lru_cache(maxsize=None)
def peft_mha_out_proj_multiplicity() -> int:
    """How many times peft's nn.MultiheadAttention LoRA wrapper adds the out_proj update in its forward.

    peft 0.21.2 adds it twice (its merge() writes W + dW into out_proj and then calls out_proj.merge(),
    which adds dW again; unmerge() subtracts twice, so the frozen weight comes back): the forward then sees
    W + 2 dW (also seen in 0.21.0). Reported upstream as huggingface/peft PR #3774. Measured on a 4-wide
    probe so that the compensation below switches itself off once peft is fixed.
    """
    # on the CPU even inside a `with torch.device("meta")` block (counting), with the global RNG untouched
    with torch.device("cpu"), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        holder = nn.Module()
        holder.attn = nn.MultiheadAttention(4, 1, batch_first=True).eval()
        inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=["attn"]), holder)
        wrapper = holder.attn
        out_proj = wrapper.get_base_layer().out_proj
        out_proj.lora_B["default"].weight.fill_(1.0)  # the in_proj factors keep B = 0: only out_proj moves
        x = torch.randn(1, 3, 4)
        got = wrapper(x, x, x, need_weights=False)[0]
        base = wrapper.get_base_layer()
        plain = nn.MultiheadAttention(4, 1, batch_first=True).eval()
        plain.in_proj_weight.copy_(base.in_proj_weight)
        plain.in_proj_bias.copy_(base.in_proj_bias)
        plain.out_proj.bias.copy_(out_proj.base_layer.bias)
        delta = out_proj.get_delta_weight("default")
        for times in (1, 2):
            plain.out_proj.weight.copy_(out_proj.base_layer.weight + times * delta)
            if torch.allclose(plain(x, x, x, need_weights=False)[0], got, atol=1e-6):
                return times
    raise RuntimeError("peft's nn.MultiheadAttention LoRA matches neither W + dW nor W + 2 dW on out_proj; "
                       "check the installed peft version")


def fix_mha_out_proj_scaling(module: nn.Module) -> None:
    """Divide the out_proj LoRA scale of every peft MHA wrapper in `module` by the number of times peft adds
    the update, so that the forward is exactly W + (alpha / r) B A (see peft_mha_out_proj_multiplicity)."""
    times = peft_mha_out_proj_multiplicity()
    if times == 1:
        return
    for sub in module.modules():
        if isinstance(sub, LoraMultiheadAttention):
            out_proj = sub.get_base_layer().out_proj
            for adapter in out_proj.scaling:
                out_proj.scaling[adapter] /= times


@register
class LoRA(Method):
    name = "lora"
    summary = "peft LoRA: BERT query/value, DETR self_attn (packed q,k,v + out_proj)"
    Config = LoRAConfig

    def apply(self, model) -> None:
        c = self.config
        freeze_encoders(model)
        for branch, module, ranks, targets in (
                ("vision", model.visumodel.encoder, c.rank_vision, c.targets_vision),
                ("language", model.textmodel.bert, c.rank_language, c.targets_language)):
            names = [n for n, _ in module.named_modules()]
            unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
            if unknown:  # peft would raise its own traceback; say which names exist
                leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.split(".")[-1].isdigit()})
                raise HarnessError(f"LoRA targets_{branch} {unknown} match no module of the {branch} encoder; its "
                                   f"module names: {', '.join(leaves)}")
            r = scaled(ranks, branch, model.config)
            scale = 1.0 if c.alpha is None else c.alpha / ranks  # alpha / r at the paper preset
            config = LoraConfig(r=r, lora_alpha=scale * r, lora_dropout=c.dropout,
                                target_modules=list(targets), bias="none")
            inject_adapter_in_model(config, module)
            fix_mha_out_proj_scaling(module)
