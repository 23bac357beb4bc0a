"""The floor of every PETL method: both encoders frozen and run without autograd; only the V-L fusion
and the box head train (no encoder-side parameters at all)."""
from methods import register
from methods.base import Method, freeze_encoders


@register
class Frozen(Method):
    name = "frozen"
    summary = "encoders frozen (no autograd); only V-L fusion and head train"
    tunes_encoder_side = False

    @property
    def encoders_need_grad(self) -> bool:
        return False

    def apply(self, model) -> None:
        freeze_encoders(model)
