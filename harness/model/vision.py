"""Vision branch: ResNet (timm, FrozenBatchNorm2d) -> 1x1 input projection -> DETR encoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from timm.models.resnet import Bottleneck, ResNet
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from harness.model.config import VisionConfig
from harness.model.transformer import Encoder, PositionEmbeddingSine, Taps

# DETR trains only layer2-4 of its backbone (backbone.py: names without layer2/3/4 are frozen), and
# TransVG inherits that; these parameters stay frozen whatever a method asks for.
NEVER_TRAINED_PREFIXES = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.")


@dataclass
class BranchOutput:
    """Final encoder features (B, N, C), padding mask (B, N) True = pad, the branch input features
    (what the first encoder layer received) and, when requested, the per-layer taps."""
    features: torch.Tensor
    mask: torch.Tensor
    inputs: torch.Tensor
    taps: list | None = None


def _narrow_stem(resnet: ResNet, width: int) -> None:
    """timm's plain 7x7 stem is always 64 channels wide (`stem_width` only shapes its deep stems), and at toy
    widths that stem costs most of the forward; rebuild it, and layer1's first block's inputs, at `width`."""
    resnet.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = nn.BatchNorm2d(width)
    first = resnet.layer1[0]
    first.conv1 = nn.Conv2d(width, first.conv1.out_channels, kernel_size=1, bias=False)
    first.downsample[0] = nn.Conv2d(width, first.downsample[0].out_channels, kernel_size=1, bias=False)
    for conv in (resnet.conv1, first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # timm's conv init


class VisionBranch(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        # zero_init_last=False: timm zeroes each block's last BN weight, which FrozenBatchNorm2d would keep at
        # zero forever (every residual branch dead) when the model starts from random weights.
        resnet = ResNet(Bottleneck, cfg.resnet_layers, channels=cfg.resnet_channels, num_classes=0, global_pool="",
                        zero_init_last=False)
        if cfg.stem_width != 64:
            _narrow_stem(resnet, cfg.stem_width)
        # torchvision FrozenBatchNorm2d: buffers only, eps 1e-5, drops num_batches_tracked on load (as DETR).
        self.backbone = freeze_batch_norm_2d(resnet)
        self.input_proj = nn.Conv2d(cfg.c5_channels, cfg.d_model, kernel_size=1)
        self.position = PositionEmbeddingSine(cfg.d_model // 2)
        self.encoder = Encoder(cfg.layers, cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout)
        self.channels_last = False  # see TransVG.optimize_for_training

    def fold_batchnorm(self) -> int:
        """Fold every FrozenBatchNorm2d into the convolution before it (see FoldedConv2d); returns the count."""
        folded = 0
        for parent in list(self.backbone.modules()):
            # timm's stem/Bottleneck name the pairs convN/bnN; a downsample is Sequential(conv, norm)
            names = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if isinstance(parent, nn.Sequential):
                names = [("0", "1")]
            for conv_name, bn_name in names:
                conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
                if type(conv) is nn.Conv2d and isinstance(bn, FrozenBatchNorm2d):
                    away = FoldedAway(bn)
                    setattr(parent, conv_name, FoldedConv2d(conv, away))
                    setattr(parent, bn_name, away)
                    folded += 1
        return folded

    def forward(self, image, image_mask, tap_names=None) -> BranchOutput:
        """`tap_names`: the taps to record per layer (None: none)."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        feat = self.backbone.forward_features(image)
        mask = F.interpolate(image_mask[None].float(), size=feat.shape[-2:])[0].to(torch.bool)
        pos = self.position(mask).to(feat.dtype).flatten(2).transpose(1, 2)
        src = self.input_proj(feat).flatten(2).transpose(1, 2)  # (B, N, d)
        mask = mask.flatten(1)
        taps = Taps(tap_names) if tap_names is not None else None
        memory = self.encoder(src, pos, mask, taps)
        return BranchOutput(memory, mask, src, taps)


class FoldedConv2d(nn.Conv2d):
    """A convolution followed by a FrozenBatchNorm2d, computed as one convolution: weight * s and bias
    b - mean * s with s = gamma / sqrt(var + eps). The same function up to float rounding, one pass over the
    activation instead of three (conv, multiply, add), and under bf16 autocast the output stays bf16 (a
    FrozenBatchNorm2d with fp32 buffers promotes it to fp32, so both copies get kept for backward). The
    parameters and buffers stay where they were, so state dicts and checkpoints are unchanged; the fold is
    recomputed at every call (cheap: weights, not activations), so loading new weights is always honoured
    and a trainable convolution still gets its exact gradient."""

    def __init__(self, conv: nn.Conv2d, bn: "FoldedAway"):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode,
                         device="meta")
        self.weight = conv.weight  # the same Parameter: state dict key and trainability unchanged
        self._bn = (bn,)  # referenced, not registered: its buffers stay under the BN's own name and device

    def forward(self, x):
        bn = self._bn[0]
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        return self._conv_forward(x, weight, bn.bias - bn.running_mean * scale)


class FoldedAway(nn.Module):
    """Where a folded FrozenBatchNorm2d was: keeps its buffers (same state dict keys), passes x through."""

    def __init__(self, bn: FrozenBatchNorm2d):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name))

    def forward(self, x):
        return x
