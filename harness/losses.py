"""TransVG's loss (utils/loss_utils.py trans_vg_loss): plain L1 on normalised (cx, cy, w, h) plus
(1 - GIoU) on the xyxy boxes, each summed over the batch and divided by the batch size, weights 1 and 1.
(The M2IST paper writes smooth-L1 + lambda * GIoU; its released code is this.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from harness.boxes import cxcywh_to_xyxy


def rec_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 1.0, giou_weight: float = 1.0) -> dict:
    batch = pred.shape[0]
    l1 = F.l1_loss(pred, target, reduction="sum") / batch
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target), reduction="sum") / batch
    return {"loss": l1_weight * l1 + giou_weight * giou, "l1": l1.detach(), "giou": giou.detach()}
