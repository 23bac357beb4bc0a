"""Parameter counts as DESIGN.md defines them: (a) encoder-side trainable (what REC PETL papers call
tunable backbone parameters: anything trainable inside the encoders or in a side network), (b) all
trainable, including fusion and head, (c) total; percent = (a) / (c). Shared modules count once."""
from __future__ import annotations

from collections import Counter

from harness.model.transvg import ENCODER_SIDE, component_of


def count_parameters(model) -> dict:
    total, trainable = Counter(), Counter()
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        component = component_of(name)
        total[component] += p.numel()
        if p.requires_grad:
            trainable[component] += p.numel()
    encoder_side = sum(trainable[c] for c in ENCODER_SIDE)
    n_total = sum(total.values())
    return {
        "encoder_side_trainable": encoder_side,
        "trainable": sum(trainable.values()),
        "total": n_total,
        "percent_encoder_side": 100.0 * encoder_side / n_total,
        "by_component": {c: {"total": total[c], "trainable": trainable[c]} for c in total},
    }
