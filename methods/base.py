"""What a method is: a config dataclass (filled from its YAML), `apply(model)` that freezes, inserts or
attaches modules on a built model, parameter groups with learning rates, and whether the frozen
encoders need autograd (side methods say no, and the model then runs them under torch.no_grad())."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.model import ENCODER_SIDE, component_of


@dataclass
class MethodConfig:
    """Hyper-parameters shared by every method; subclasses add their own fields."""


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `harness methods`
    Config: ClassVar[type] = MethodConfig
    tunes_encoder_side: ClassVar[bool] = True  # False: no encoder-side parameters, so lr_encoder changes nothing

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    @property
    def encoders_need_grad(self) -> bool:
        return True

    def apply(self, model) -> None:
        raise NotImplementedError

    def param_groups(self, model, lr: float, lr_encoder: float) -> list[dict]:
        """Encoder-side trainable parameters at `lr_encoder`, fusion and head at `lr` (the TransVG/M2IST recipe).
        Groups say whether they start from scratch (`scratch`): everything but the encoders' own weights does,
        which is what a recipe's `lr_scale` speeds up."""
        groups = {"encoder_weights": [], "encoder_modules": [], "fusion_head": []}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if component_of(name) not in ENCODER_SIDE:
                groups["fusion_head"].append(p)
            else:
                groups["encoder_weights" if model.is_encoder_weight(p) else "encoder_modules"].append(p)
        rates = {"encoder_weights": lr_encoder, "encoder_modules": lr_encoder, "fusion_head": lr}
        return [{"name": k, "params": v, "lr": rates[k], "scratch": k != "encoder_weights"}
                for k, v in groups.items() if v]


def freeze_encoders(model) -> None:
    """Both encoders frozen; V-L fusion and box head trainable (the protocol every PETL method shares)."""
    model.set_trainable(("vision", "language", "side"), False)
    model.set_trainable(("fusion", "head"), True)
