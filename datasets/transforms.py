"""TransVG's image/box/text transforms, on a dict {'img': PIL image, 'box': xyxy float tensor, 'text': str}.

The output box is normalised (cx, cy, w, h) in the padded square; 'mask' is True on padding. Pixel constants are
TransVG's at 640 px and scale with image_size / 640. All randomness comes from Python's `random` and torch's
global generator, so seeding both per epoch makes augmentation reproducible.
"""
from __future__ import annotations

import random
import re

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPATIAL_WORDS = ("left", "right", "top", "bottom", "middle")


def xyxy_to_cxcywh(box: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = box.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


# Side words a mirrored image must mirror: "left"/"right" alone or hyphenated (top-left, left-hand), and the
# compounds written fused, with a position word before (topleft, bottomright, upperleft, farright) and/or a
# suffix after (leftmost, lefthand, leftside, leftward). Words that merely contain the letters (bright, upright,
# copyright, alright, leftover, righteous, rights) are not side words and stay.
_PREFIXES = "top|bottom|upper|lower|far|mid|middle|center|centre|front|back"
_SUFFIXES = "most|hand|handed|side|sides|ward|wards|er|est"
_SIDE_WORD = re.compile(rf"(?<![A-Za-z])((?:{_PREFIXES})?)(left|right)((?:{_SUFFIXES})?)(?![A-Za-z])", re.IGNORECASE)


def _mirror(m: re.Match) -> str:
    side = m.group(2)
    other = "right" if side.lower() == "left" else "left"
    if side.isupper():
        other = other.upper()
    elif side[0].isupper():
        other = other.capitalize()
    return m.group(1) + other + m.group(3)


def swap_left_right(text: str) -> str:
    """The expression of a horizontally flipped image: every side word mirrored (see _SIDE_WORD), case kept.
    TransVG (datasets/transforms.py:154) replaces substrings, which turns "bright" into "bleft"."""
    return _SIDE_WORD.sub(_mirror, text)


def eval_geometry(width: int, height: int, image_size: int) -> tuple[float, int, int]:
    """(scale, left, top) that the eval transforms apply to a width x height image."""
    scale = image_size / max(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    return scale, round((image_size - new_w) / 2.0 - 0.1), round((image_size - new_h) / 2.0 - 0.1)


def box_to_pixels(box: torch.Tensor, width: int, height: int, image_size: int) -> torch.Tensor:
    """Normalised cxcywh in the eval-padded square -> xyxy pixels of the original image."""
    scale, left, top = eval_geometry(width, height, image_size)
    xyxy = cxcywh_to_xyxy(box) * image_size - torch.tensor([left, top, left, top], dtype=box.dtype)
    return xyxy / scale


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


def _resize(sample: dict, size: int, long_side: bool) -> dict:
    img = sample["img"]
    side = max(img.width, img.height) if long_side else min(img.width, img.height)
    ratio = size / side
    sample["img"] = F.resize(img, [round(img.height * ratio), round(img.width * ratio)])
    sample["box"] = sample["box"] * ratio
    return sample


class RandomResize:
    def __init__(self, sizes, long_side: bool = True):
        self.sizes = list(sizes)
        self.long_side = long_side

    def __call__(self, sample: dict) -> dict:
        return _resize(sample, random.choice(self.sizes), self.long_side)


class RandomSizeCrop:
    def __init__(self, min_size: int, max_size: int, max_try: int = 20):
        self.min_size, self.max_size, self.max_try = min_size, max_size, max_try

    def __call__(self, sample: dict) -> dict:
        img, box = sample["img"], sample["box"]
        for _ in range(self.max_try):
            w = random.randint(self.min_size, min(img.width, self.max_size))
            h = random.randint(self.min_size, min(img.height, self.max_size))
            top, left, h, w = T.RandomCrop.get_params(img, [h, w])
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            # TransVG's acceptance test, axes mixed as written there (centre x against the crop's top).
            if cx > top and cy > left:
                cropped = box - torch.tensor([left, top, left, top], dtype=box.dtype)
                cropped = torch.min(cropped.reshape(2, 2), torch.tensor([w, h], dtype=box.dtype)).clamp(min=0)
                sample["img"] = F.crop(img, top, left, h, w)
                sample["box"] = cropped.reshape(-1)
                return sample
        return sample


class RandomSelect:
    """Spatial words never get the crop branch (a crop could remove what 'left'/'top' refers to)."""

    def __init__(self, plain, crop, p: float = 0.5):
        self.plain, self.crop, self.p = plain, crop, p

    def __call__(self, sample: dict) -> dict:
        if any(word in sample["text"] for word in SPATIAL_WORDS):  # substring test, as TransVG
            return self.plain(sample)
        return self.crop(sample) if random.random() < self.p else self.plain(sample)


class ColorJitter:
    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, p=0.8):
        self.factors = (brightness, contrast, saturation)
        self.p = p

    def __call__(self, sample: dict) -> dict:
        if random.random() < self.p:
            img = sample["img"]
            enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
            # TransVG draws the order from numpy's RNG; Python's keeps all randomness under one seed.
            for k in random.sample(range(3), 3):
                img = enhancers[k](img).enhance(random.uniform(1 - self.factors[k], 1 + self.factors[k]))
            sample["img"] = img
        return sample


def hflip(sample: dict) -> dict:
    img, box = sample["img"], sample["box"]
    sample["img"] = F.hflip(img)
    sample["box"] = torch.stack([img.width - box[2], box[1], img.width - box[0], box[3]])
    sample["text"] = swap_left_right(sample["text"])
    return sample


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: dict) -> dict:
        return hflip(sample) if random.random() < self.p else sample


class ToTensor:
    def __call__(self, sample: dict) -> dict:
        sample["img"] = F.to_tensor(sample["img"])
        return sample


class NormalizeAndPad:
    def __init__(self, size: int, aug_translate: bool = False):
        self.size, self.aug_translate = size, aug_translate

    def __call__(self, sample: dict) -> dict:
        img = F.normalize(sample["img"], mean=IMAGENET_MEAN, std=IMAGENET_STD)
        h, w = img.shape[1:]
        dh, dw = self.size - h, self.size - w
        if self.aug_translate:
            top, left = random.randint(0, dh), random.randint(0, dw)
        else:
            top, left = round(dh / 2.0 - 0.1), round(dw / 2.0 - 0.1)
        canvas = torch.zeros(3, self.size, self.size)
        mask = torch.ones(self.size, self.size, dtype=torch.bool)
        canvas[:, top:top + h, left:left + w] = img
        mask[top:top + h, left:left + w] = False
        sample["img"], sample["mask"] = canvas, mask
        box = sample["box"] + torch.tensor([left, top, left, top], dtype=sample["box"].dtype)
        sample["box"] = xyxy_to_cxcywh(box) / self.size
        return sample


def make_transforms(image_size: int, train: bool, augment: bool = True) -> Compose:
    """TransVG's train pipeline with --aug_crop --aug_scale --aug_translate (as all its published runs), or the
    eval pipeline. `augment=False` gives the eval pipeline for training too (TransVG would still jitter and flip):
    a deterministic input for overfitting checks."""
    def px(value):
        return round(value * image_size / 640)

    if not (train and augment):
        return Compose([RandomResize([image_size]), ToTensor(), NormalizeAndPad(image_size)])
    scales = [px(640 - 32 * i) for i in range(7)]
    return Compose([
        RandomSelect(
            RandomResize(scales),
            Compose([RandomResize([px(400), px(500), px(600)], long_side=False),
                     RandomSizeCrop(px(384), px(600)),
                     RandomResize(scales)]),
            p=0.5,
        ),
        ColorJitter(0.4, 0.4, 0.4),
        RandomHorizontalFlip(),
        ToTensor(),
        NormalizeAndPad(image_size, aug_translate=True),
    ])
