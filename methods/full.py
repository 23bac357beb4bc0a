"""Full fine-tuning (TransVG): every parameter trains except DETR's never-trained stem and layer1;
encoder parameters (ResNet, DETR encoder, BERT) at the encoder learning rate."""
from methods import register
from methods.base import Method


@register
class FullFineTuning(Method):
    name = "full"
    summary = "full fine-tuning (TransVG): all encoders, fusion and head train"

    def apply(self, model) -> None:
        model.set_trainable(("vision", "language", "side", "fusion", "head"), True)
