"""`harness data baseline`: what a predictor that never reads the expression scores (Acc@0.5 per eval split).

The candidates on an image are the distinct boxes the dataset's index refers to there, over all its splits (a
RefCOCO image carries expressions for several of its objects; the index knows no other objects). A text-blind
predictor picks one of them: the largest, the one whose centre is nearest the image's centre, or one at random
(scored by its expectation, so no seed). A REC result means something only clearly above all three. Where every
object on an image is referred to equally often (the synthetic set: once each), all three score the same, the mean
of 1 / candidates: no text-blind rule can do better there.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from PIL import Image
from torchvision.ops import box_area, box_iou

from datasets.catalog import DataPaths, get_spec
from datasets.errors import DataError
from datasets.index import load_split

RULES = ("largest", "central", "random")


def _image_size(path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:  # reads the header only
            return img.size
    except (OSError, ValueError) as err:
        raise DataError(f"image {path} unreadable ({type(err).__name__}); see `harness data check`") from None


def text_blind_baselines(paths: DataPaths, name: str) -> dict[str, dict]:
    """{split: {"largest"|"central"|"random": Acc@0.5, "n": records, "candidates": mean candidates per record}}."""
    spec = get_spec(name)
    splits = {s: load_split(paths, name, s) for s in spec.distinct_splits}
    boxes: dict[str, set] = defaultdict(set)
    for records in splits.values():
        for r in records:
            boxes[r.image_file].add(r.box)
    image_dir = paths.image_dir(name)
    sizes: dict[str, tuple[int, int]] = {}  # each image is opened once, however many expressions it has
    out = {}
    for split in spec.eval_splits:
        hits = {rule: 0.0 for rule in RULES}
        ious = {rule: 0.0 for rule in RULES}
        n_candidates = 0
        for r in splits[split]:
            candidates = torch.tensor(sorted(boxes[r.image_file]), dtype=torch.float64)
            iou = box_iou(candidates, torch.tensor([r.box], dtype=torch.float64))[:, 0]
            hit = iou >= 0.5
            if r.image_file not in sizes:
                sizes[r.image_file] = _image_size(image_dir / r.image_file)
            width, height = sizes[r.image_file]
            centres = (candidates[:, :2] + candidates[:, 2:]) / 2
            off_centre = (centres - torch.tensor([width / 2, height / 2], dtype=torch.float64)).norm(dim=1)
            picks = {"largest": box_area(candidates).argmax(), "central": off_centre.argmin()}
            for rule, pick in picks.items():
                hits[rule] += float(hit[pick])
                ious[rule] += float(iou[pick])
            hits["random"] += hit.double().mean().item()
            ious["random"] += iou.mean().item()
            n_candidates += len(candidates)
        n = len(splits[split])
        if n == 0:
            raise DataError(f"the {split} split of {name} under {paths.split_root} is empty")
        out[split] = {**{rule: hits[rule] / n for rule in RULES}, "miou": {rule: ious[rule] / n for rule in RULES},
                      "n": n, "candidates": n_candidates / n}
    return out


def format_baselines(name: str, results: dict[str, dict]) -> str:
    from tabulate import tabulate

    rows = [[split, *(f"{r[rule]:.3f}" for rule in RULES), r["n"], f"{r['candidates']:.1f}"]
            for split, r in results.items()]
    header = ["split", *(f"{rule} Acc@0.5" for rule in RULES), "expressions", "candidates / expression"]
    return f"text-blind baselines on {name}:\n" + tabulate(rows, header, tablefmt="github")
