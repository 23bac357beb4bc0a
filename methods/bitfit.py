"""BitFit: only the bias terms of both encoders train.

Paper: E. Ben Zaken, S. Ravfogel, Y. Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022 (arXiv 2106.10199). Released code:
github:benzakenelad/BitFit @7ead19a. Its `--bias-terms all` (the paper's BitFit; run_glue.py L39) trains every
parameter whose name contains "bias" (glue_evaluator.py L81 `'all': 'bias'`, L612-626: a substring match over
`named_parameters`), so the LayerNorm biases (BERT's embedding LayerNorm included) train with the linear ones;
the LayerNorm gains do not.

Adapted to this model: the same rule over both encoders. Vision: the 1x1 input projection's bias and every bias
of the DETR encoder (packed q/k/v `in_proj_bias`, `out_proj.bias`, both FFN biases, norm1/norm2 biases); the
ResNet has no bias parameters (its convolutions are bias-free and its FrozenBatchNorm2d shifts are buffers, frozen
by DETR's design). Language: every bias of BERT (embedding LayerNorm, q/k/v, attention output, intermediate,
output, both LayerNorms of every layer). BitFit also trains BERT's pooler bias for its classifier; TransVG never
reads the pooler, so it is left out. Nothing is inserted, the encoders' weights stay frozen, and gradients cross
the frozen encoders to reach the biases (encoders need autograd). V-L fusion and box head train as in every method.
"""
from __future__ import annotations

from methods import register
from methods.base import Method, freeze_encoders


def is_bias(name: str) -> bool:
    """BitFit's rule (glue_evaluator.py L81, L622-625): the parameter's name contains 'bias'."""
    return "bias" in name.rsplit(".", 1)[-1]


@register
class BitFit(Method):
    name = "bitfit"
    summary = "bias terms of both encoders train, nothing else of them (BitFit)"

    def apply(self, model) -> None:
        freeze_encoders(model)
        for name, p in model.named_parameters():
            if (name.startswith(("visumodel.", "textmodel.")) and is_bias(name) and not model.never_trained(name)
                    and ".pooler." not in name):
                p.requires_grad_(True)
