"""Box conversions and IoU on normalised coordinates (torchvision.ops for the IoU family)."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def paired_iou(pred_xyxy: torch.Tensor, gt_xyxy: torch.Tensor) -> torch.Tensor:
    """IoU of each prediction with its own ground truth (the diagonal of box_iou, computed directly)."""
    lt = torch.max(pred_xyxy[:, :2], gt_xyxy[:, :2])
    rb = torch.min(pred_xyxy[:, 2:], gt_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred_xyxy[:, 2:] - pred_xyxy[:, :2]).clamp(min=0).prod(dim=1)
    area_g = (gt_xyxy[:, 2:] - gt_xyxy[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_p + area_g - inter + 1e-16)  # TransVG's bbox_iou adds 1e-16 too


def paired_giou(pred_xyxy: torch.Tensor, gt_xyxy: torch.Tensor) -> torch.Tensor:
    return torch.diag(generalized_box_iou(pred_xyxy, gt_xyxy))


__all__ = ["cxcywh_to_xyxy", "paired_iou", "paired_giou", "box_iou"]
