"""TransVG's image/box/text transforms, on a dict {'img': image, 'box': xyxy float tensor, 'text': str}.

The image is a PIL image (the eval pipeline, as TransVG) or a uint8 CHW tensor (the training pipeline: decoded
by PIL, then resampled by torchvision's uint8 kernels, about 4x faster than PIL's resize: within 2 grey levels of
it, and within 5 after the colour jitter's factors (up to 1.4 each) scale the difference; test_data_transforms.py).
Both end in a uint8 canvas: 'img' is the (3, size, size) image pasted into zeros, 'mask' is True on padding, and
the box is normalised (cx, cy, w, h) in that square. The float conversion, ImageNet normalisation
and, on CUDA, the colour jitter run on the batch (`normalize_images`), so that a loader worker only decodes,
resamples and pastes: ToTensor + Normalize + pad cost ~6 ms of a worker's ~11 ms per 640 px sample. Pixel
constants are TransVG's at 640 px and scale with image_size / 640. All randomness comes from Python's `random`
and torch's global generator, drawn in the same order for either image type, so seeding both per epoch makes
augmentation reproducible and the geometry (boxes, crops, flips, texts, padding) identical to the PIL pipeline.
"""
from __future__ import annotations

import random
import re

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPATIAL_WORDS = ("left", "right", "top", "bottom", "middle")


def xyxy_to_cxcywh(box: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = box.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


# A mirrored image mirrors every token (a run of letters) that holds "left" or "right": whole words, hyphenated
# parts (top-left) and fused forms (leftmost, topright, leftguy, lefthalf, rightcorner, lefthandside, lefty), each
# occurrence swapped as TransVG's substring replace does (datasets/transforms.py:154 @c862427), case kept. Unlike
# TransVG, tokens that only contain the letters stay: the words below, and any token holding one of the stems.
NOT_SIDE_WORDS = frozenset({"rights", "aright"})
NOT_SIDE_STEMS = ("bright", "fright", "wright", "spright", "upright", "alright", "copyright", "downright",
                  "outright", "forthright", "birthright", "righteous", "rightful", "leftover", "cleft")
_TOKEN = re.compile(r"[A-Za-z]+")
_SIDE = re.compile(r"left|right", re.IGNORECASE)


def _mirror_side(m: re.Match) -> str:
    side = m.group(0)
    other = "right" if side.lower() == "left" else "left"
    if side.isupper():
        return other.upper()
    return other.capitalize() if side[0].isupper() else other


def _mirror_token(m: re.Match) -> str:
    token = m.group(0)
    lower = token.lower()
    if lower in NOT_SIDE_WORDS or any(stem in lower for stem in NOT_SIDE_STEMS):
        return token
    return _SIDE.sub(_mirror_side, token)


def swap_left_right(text: str) -> str:
    """The expression of a horizontally flipped image: every side word mirrored (see NOT_SIDE_STEMS above), case
    kept. TransVG replaces substrings anywhere, which also turns "bright" into "bleft"."""
    return _TOKEN.sub(_mirror_token, text)


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


def image_size_of(img) -> tuple[int, int]:
    """(width, height) of a PIL image or a CHW tensor."""
    return (img.shape[-1], img.shape[-2]) if isinstance(img, torch.Tensor) else img.size


def _resize(sample: dict, size: int, long_side: bool) -> dict:
    img = sample["img"]
    width, height = image_size_of(img)
    ratio = size / (max(width, height) if long_side else min(width, height))
    new_size = [round(height * ratio), round(width * ratio)]
    # PIL: Image.resize (bilinear, antialiased), as TransVG; tensors: the v2 API's uint8 bilinear antialias kernel
    # (the v1 API resamples uint8 tensors in float, 4x slower).
    if isinstance(img, torch.Tensor):
        sample["img"] = F2.resize(img, new_size, antialias=True)
    else:
        sample["img"] = F.resize(img, new_size)
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
        width, height = image_size_of(img)
        for _ in range(self.max_try):
            w = random.randint(self.min_size, min(width, self.max_size))
            h = random.randint(self.min_size, min(height, self.max_size))
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


def _to_pil(img) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy()) if isinstance(img, torch.Tensor) else img


def to_uint8_tensor(img) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1)


ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


class ColorJitter:
    """Brightness, contrast and saturation (PIL's ImageEnhance, as TransVG) in a random order, each with a factor
    drawn from [1 - x, 1 + x], with probability p. `defer=True` draws the same numbers in the same order but only
    records them (sample['jitter'][position, op] = factor, 1 = not applied), for `normalize_images` to apply on
    the batch: on a GPU that takes the jitter out of the loader workers (PIL's uint8 enhance is ~2-4 ms of a 640 px
    sample; on a CPU the float version costs more than PIL's in the worker, so CPU runs keep it there). Either way
    the output is PIL's, level for level (`color_jitter`)."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, p=0.8, defer: bool = False):
        self.factors = (brightness, contrast, saturation)
        self.p, self.defer = p, defer

    def __call__(self, sample: dict) -> dict:
        factors = torch.ones(3, 3)
        if random.random() < self.p:
            # TransVG draws the order from numpy's RNG; Python's keeps all randomness under one seed.
            drawn = [(k, random.uniform(1 - self.factors[k], 1 + self.factors[k])) for k in random.sample(range(3), 3)]
            for position, (k, factor) in enumerate(drawn):
                factors[position, k] = factor
            if not self.defer:
                img = _to_pil(sample["img"])
                for k, factor in drawn:
                    img = ENHANCERS[k](img).enhance(factor)
                sample["img"] = to_uint8_tensor(img) if isinstance(sample["img"], torch.Tensor) else img
        if self.defer:
            sample["jitter"] = factors
        return sample


def hflip(sample: dict) -> dict:
    img, box = sample["img"], sample["box"]
    width = image_size_of(img)[0]
    sample["img"] = F.hflip(img)
    sample["box"] = torch.stack([width - box[2], box[1], width - box[0], box[3]])
    sample["text"] = swap_left_right(sample["text"])
    return sample


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: dict) -> dict:
        return hflip(sample) if random.random() < self.p else sample


class PadToCanvas:
    """TransVG's NormalizeAndPad without the normalisation (done on the batch by `normalize_images`): the image
    pasted into a zero uint8 square, centred or (aug_translate) at a random offset; the box moves with it."""

    def __init__(self, size: int, aug_translate: bool = False):
        self.size, self.aug_translate = size, aug_translate

    def __call__(self, sample: dict) -> dict:
        img = to_uint8_tensor(sample["img"])
        h, w = img.shape[1:]
        dh, dw = self.size - h, self.size - w
        if self.aug_translate:
            top, left = random.randint(0, dh), random.randint(0, dw)
        else:
            top, left = round(dh / 2.0 - 0.1), round(dw / 2.0 - 0.1)
        canvas = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        mask = torch.ones(self.size, self.size, dtype=torch.bool)
        canvas[:, top:top + h, left:left + w] = img
        mask[top:top + h, left:left + w] = False
        sample["img"], sample["mask"] = canvas, mask
        box = sample["box"] + torch.tensor([left, top, left, top], dtype=sample["box"].dtype)
        sample["box"] = xyxy_to_cxcywh(box) / self.size
        return sample


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend on uint8 levels held in float32 (libImaging/Blend.c): in1 + alpha * (in2 - in1) in
    float32, clipped to [0, 255] and truncated. Separate multiply and add kernels, so no fused multiply-add
    changes a rounding; where factor == 1 (an op a sample did not draw) the levels come back unchanged."""
    return (degenerate + factor * (img - degenerate)).clamp_(0, 255).floor_()


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L") (libImaging/Convert.c, L24): (R 19595 + G 38470 + B 7471 + 0x8000) >> 16, exact in
    float32 (every partial sum is an integer below 2 ** 24)."""
    r, g, b = x.unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).unsqueeze(1)


def color_jitter(levels: torch.Tensor, valid: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """ColorJitter's draws applied to a batch of uint8 levels held in float32 (B, 3, H, W), as PIL's ImageEnhance
    computes them: position by position, brightness (blend with black), contrast (blend with the mean grey level
    over the unpadded pixels, rounded to a level as ImageStat + int(mean + 0.5)) and saturation (blend with the grey
    image); factors (B, position, op) are 1 where a sample did not draw that op there. The result equals PIL's
    level for level (tests/test_data_transforms.py)."""
    count = valid.sum((1, 2)).clamp(min=1).double().view(-1, 1, 1, 1)
    for position in range(3):
        f = factors[:, position].to(levels.dtype).view(-1, 3, 1, 1, 1)
        levels = _blend(torch.zeros_like(levels), levels, f[:, 0])
        mean = (_grey(levels).double() * valid[:, None]).sum((2, 3), keepdim=True) / count  # float64, as ImageStat
        levels = _blend(torch.floor(mean + 0.5).to(levels.dtype), levels, f[:, 1])
        levels = _blend(_grey(levels), levels, f[:, 2])
    return levels


def normalize_images(images: torch.Tensor, mask: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """A collated uint8 canvas batch -> the model's float input: the deferred colour jitter if any, ToTensor's
    /255, ImageNet normalisation, zeros on the padding: the ops and the order of TransVG's ColorJitter, ToTensor and
    NormalizeAndPad, so the result is bit-identical to them (tests/test_data_transforms.py)."""
    x = images.float()
    if jitter is not None:
        x = color_jitter(x, ~mask, jitter)
    x = x.div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std).masked_fill_(mask[:, None], 0.0)


def model_inputs(batch: dict, device) -> dict:
    """A collated batch on `device` with its images normalised (and jittered) there: what the model reads."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if batch["image"].dtype == torch.uint8:
        batch["image"] = normalize_images(batch["image"], batch["image_mask"], batch.pop("jitter", None))
    return batch


def make_transforms(image_size: int, train: bool, augment: bool = True, defer_jitter: bool = False) -> Compose:
    """TransVG's train pipeline with --aug_crop --aug_scale --aug_translate (as all its published runs), or the
    eval pipeline. `augment=False` gives the eval pipeline for training too (TransVG would still jitter and flip):
    a deterministic input for overfitting checks. `defer_jitter`: see ColorJitter."""
    def px(value):
        return round(value * image_size / 640)

    if not (train and augment):
        return Compose([RandomResize([image_size]), PadToCanvas(image_size)])
    scales = [px(640 - 32 * i) for i in range(7)]
    return Compose([
        RandomSelect(
            RandomResize(scales),
            Compose([RandomResize([px(400), px(500), px(600)], long_side=False),
                     RandomSizeCrop(px(384), px(600)),
                     RandomResize(scales)]),
            p=0.5,
        ),
        ColorJitter(0.4, 0.4, 0.4, defer=defer_jitter),
        RandomHorizontalFlip(),
        PadToCanvas(image_size, aug_translate=True),
    ])
