"""The training data pipeline per worker: samples/s of one worker's work (decode, TransVG's training augmentation,
tokenisation) on COCO-like JPEGs, next to a decode-only floor on the same files (`harness profile --loader`).

COCO-like: 640 x 480 JPEGs at quality 90 whose content has a photo-like spectrum (noise summed over octaves, grain,
solid shapes with edges), 100-150 KiB each, near COCO train2014's mean (13 GB / 82,783 images = 157 KiB), so that
the entropy decoder does a photo's work; flat synthetic scenes decode faster than photos and would flatter the
loader. Each file gets one index record in TransVG's layout, so the exact dataset class and transforms of a run
are what is timed.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from datasets.catalog import COCO_TRAIN2014
from datasets.files import building

WIDTH, HEIGHT, QUALITY = 640, 480, 90
WORDS = ("the", "man", "left", "woman", "right", "red", "car", "dog", "on", "big", "small", "cup", "table")


def _photo_like(rng: np.random.Generator) -> Image.Image:
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for cells, weight in ((4, 50.0), (16, 30.0), (64, 30.0), (256, 25.0)):  # octaves: coarse blobs to fine texture
        small = rng.normal(0.0, 1.0, size=(max(1, HEIGHT * cells // WIDTH), cells, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(small[..., c]).resize((WIDTH, HEIGHT), Image.BICUBIC)
            pixels[..., c] += weight * np.asarray(layer)
    pixels += rng.normal(0.0, 10.0, size=pixels.shape)  # sensor grain
    image = Image.fromarray(np.clip(pixels + rng.uniform(90, 160, size=3), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, WIDTH - 80)), int(rng.integers(0, HEIGHT - 80))
        w, h = int(rng.integers(40, 240)), int(rng.integers(40, 200))
        draw.rectangle((x, y, min(WIDTH - 1, x + w), min(HEIGHT - 1, y + h)),
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def coco_like_root(folder, images: int = 300, seed: int = 13) -> Path:
    """A data root with `images` COCO-like JPEGs and one `unc` train record per image; made once, reused."""
    folder = Path(folder)
    if (folder / "data" / "unc" / "unc_train.pth").is_file():
        return folder
    rng = np.random.default_rng(seed)
    with building(folder) as tmp:
        image_dir = tmp / "ln_data" / COCO_TRAIN2014
        image_dir.mkdir(parents=True)
        rows = []
        for i in range(images):
            name = f"COCO_train2014_{i + 1:012d}.jpg"
            _photo_like(rng).save(image_dir / name, quality=QUALITY)
            x, y = int(rng.integers(0, 400)), int(rng.integers(0, 300))
            box = [float(x), float(y), float(rng.integers(40, 200)), float(rng.integers(40, 160))]
            phrase = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 8))))
            rows.append((name, f"{i}.pth", box, phrase, ""))
        (tmp / "data" / "unc").mkdir(parents=True)
        for split in ("train", "val", "testA", "testB"):
            torch.save(rows if split == "train" else rows[:4], tmp / "data" / "unc" / f"unc_{split}.pth")
        (tmp / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return folder


def _rate(fn, n: int, repeats: int = 3) -> float:
    """Samples/s of fn(i) for i < n, the median of `repeats` passes after one untimed pass (file cache warm)."""
    for i in range(n):
        fn(i)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def _like(dataset, **kwargs):
    """`dataset`'s training split with other pipeline options."""
    from datasets.rec import RECDataset

    return RECDataset(dataset.paths, dataset.name, dataset.splits, dataset.tokenizer, dataset.image_size,
                      train=True, max_query_len=dataset.max_query_len, **kwargs)


def _variants(dataset) -> dict:
    """The training sample as one worker makes it, lever by lever, from the previous pipeline to today's (each on
    the same files and seeds; geometry, draws and texts are the same in all of them)."""
    from datasets.transforms import normalize_images

    pil, tensor, deferred = (_like(dataset, pil_geometry=True), _like(dataset),
                             _like(dataset, defer_jitter=True))

    def previous(i):  # PIL resampling and jitter, then ToTensor + NormalizeAndPad in the worker
        item = pil[i]
        return normalize_images(item["image"][None], item["image_mask"][None])

    return {"previous (PIL resampling, jitter and float normalisation in the worker)": previous,
            "+ uint8 canvas, normalised on the batch": lambda i: pil[i],
            "+ uint8 tensor resampling (torchvision)": lambda i: tensor[i],
            "+ colour jitter on the batch (CUDA runs)": lambda i: deferred[i]}


def per_worker(dataset, samples: int | None = None, seed: int = 13) -> dict:
    """One worker's throughput, measured in this process (no inter-process copies): each pipeline variant's full
    training sample (decode + augmentation + tokenisation, as a DataLoader worker runs it; `_variants`), the
    decode-only floor (PIL open + RGB conversion of the same files), and what the batch side then costs per sample
    on this CPU (normalisation, and the deferred jitter), which a GPU run does on the GPU."""
    import random

    from datasets.rec import collate
    from datasets.transforms import normalize_images

    n = min(samples or len(dataset), len(dataset))
    files = [dataset.image_dir / r.image_file for r in dataset.records[:n]]

    def decode(i):
        with Image.open(files[i]) as img:
            img.convert("RGB")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        rates, variants = {}, _variants(dataset)
        for name, make in variants.items():
            random.seed(seed)
            torch.manual_seed(seed)
            rates[name] = _rate(make, n)
        floor = _rate(decode, n)
        # CPU runs on the synthetic set read it in their own process and keep it decoded (run.run): the CPU
        # runs' variant over the cache that `_rate`'s untimed pass fills
        random.seed(seed)
        torch.manual_seed(seed)
        cached = _rate(_like(dataset, cache_images=True).__getitem__, n)
        size = min(16, n)  # a batch of up to 16 samples, fewer in a smaller split
        batch = collate([list(variants.values())[-1](i) for i in range(size)])  # with the jitter's draws
        batch_ms = {
            "normalise": 1000 / _rate(lambda _: normalize_images(batch["image"], batch["image_mask"]), 4) / size,
            "jitter + normalise": 1000 / _rate(lambda _: normalize_images(batch["image"], batch["image_mask"],
                                                                          batch["jitter"]), 4) / size}
    finally:
        torch.set_num_threads(threads)
    sizes = [f.stat().st_size for f in files]
    before, after = next(iter(rates.values())), list(rates.values())[-1]
    return {"variants_samples_per_s": rates, "pipeline_samples_per_s": after, "previous_samples_per_s": before,
            "speedup": after / before, "cpu_pipeline_decoded_once_samples_per_s": cached,
            "decode_floor_samples_per_s": floor, "pipeline_share_of_floor": after / floor,
            "batch_side_cpu_ms_per_sample": batch_ms, "samples": n, "mean_jpeg_kib": statistics.fmean(sizes) / 1024,
            "torch_threads": 1,
            "what": "one worker's work in one process: dataset[i] (decode, TransVG training augmentation, "
                    "tokenisation) for each pipeline variant vs PIL open + RGB conversion of the same files; median "
                    "of 3 passes after a warm one. The variants add one lever each, in order; the last is what a CUDA "
                    "run's workers do, the one before it what a CPU run's do"}
