"""Acc@0.5 and mean IoU, exactly as TransVG scores (utils/eval_utils.py): predicted cxcywh -> xyxy,
clamped to [0, 1], IoU with the ground truth in the normalised padded frame, correct iff IoU >= 0.5
(`strict=True` gives the one-stage papers' IoU > 0.5)."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from datasets.transforms import model_inputs
from harness.boxes import cxcywh_to_xyxy, paired_iou


def score_boxes(pred_cxcywh: torch.Tensor, gt_cxcywh: torch.Tensor, strict: bool = False):
    """Per-sample (correct, iou)."""
    pred = cxcywh_to_xyxy(pred_cxcywh).clamp(0, 1)
    iou = paired_iou(pred, cxcywh_to_xyxy(gt_cxcywh))
    correct = iou > 0.5 if strict else iou >= 0.5
    return correct, iou


def pack_outcomes(correct) -> str:
    """Per-expression hits (in index order) as hex of numpy.packbits: 1 bit per expression, what paired
    statistics between methods need (harness/stats.py)."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_outcomes(hexed: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8), count=n).astype(bool)


@torch.no_grad()
def evaluate(model, loader, device, amp: bool = False, strict: bool = False) -> dict:
    """Acc@0.5, mIoU and n over the loader's split, and `outcomes`: every expression's hit in index order
    (pack_outcomes). Under DDP each rank holds the shard rank, rank + world, ... (engine.build_loader)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, iou sum, count
    hits = []
    for batch in loader:
        batch = model_inputs(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"])
        correct, iou = score_boxes(pred.float(), batch["box"], strict)
        hits.append(correct.cpu())
        totals += torch.stack([correct.sum().double(), iou.sum().double(), torch.tensor(len(iou), device=device,
                                                                                      dtype=torch.float64)])
    hits = torch.cat(hits).tolist() if hits else []
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, hits)
        hits = [None] * sum(len(s) for s in shards)
        for rank, shard in enumerate(shards):
            hits[rank::len(shards)] = shard
    correct, iou_sum, n = totals.tolist()
    return {"accuracy": correct / max(n, 1), "miou": iou_sum / max(n, 1), "n": int(n), "outcomes": pack_outcomes(hits)}
