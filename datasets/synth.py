"""Write the synthetic dataset in TransVG's index format under the names unc, unc+, gref, gref_umd and referit.

root/data/<name>/<name>_<split>.pth   lists of plain tuples (readable by torch.load(weights_only=True))
root/ln_data/...                      images where the real ones live (COCO file names for the COCO names)
root/vocab.txt                        closed WordPiece vocabulary, [PAD] = 0
root/scenes.json                      every image's objects (xyxy box, shape, colour, size, ann_id)

Each name draws from its own seed and takes on its real counterpart's traits: unc+ avoids location words,
gref/gref_umd say more per expression, gref splits objects (an image can be in train and val), unc/unc+ put
circle targets ("people") in testA and the rest in testB. Output is identical for identical (seed, images).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.catalog import get_spec
from datasets.errors import DataError
from datasets.files import building, disk_full, replace_entries, save_torch, temp_dir, write_error
from datasets.synth_grammar import describe, elaborate, parse, resolve, sentences, vocabulary
from datasets.synth_scenes import PERSON_SHAPE, SHAPES, render, sample_scene

# Version of the scenes, expressions and splits: in the cache folder's name, so that a set made by an older
# generator is never reused (2: issue 28's larger objects and larger eval splits).
GENERATOR_VERSION = 2
DEFAULT_IMAGES = 2400  # per name; unc train then has about 4,000 expressions and each eval split about 3,000
MIN_IMAGES = 5  # one image for each of unc's four splits, and enough refs for a gref val split
MAX_IMAGES = 99_999  # the COCO names share one image folder and take disjoint blocks of 100,000 ids
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class _Flavour:
    image_splits: tuple[tuple[str, float], ...]  # fractions of the images; the first split takes the rest
    first_image_id: int
    locations: bool = True  # position and relation words allowed
    long: bool = False  # RefCOCOg-style longer expressions
    val_every: int = 0  # google split: every n-th ref (not image) goes to val


# Eval splits large enough that the binomial standard error of an Acc@0.5 near 50% is <= 1 point (>= 2,500
# expressions each at the default size), train as before (~4,000 expressions).
FLAVOURS = {
    "unc": _Flavour((("train", 0.3), ("val", 0.233), ("testA", 0.233), ("testB", 0.233)), 1),
    "unc+": _Flavour((("train", 0.3), ("val", 0.233), ("testA", 0.233), ("testB", 0.233)), 100_001, locations=False),
    "gref": _Flavour((("train", 1.0),), 200_001, long=True, val_every=3),
    "gref_umd": _Flavour((("train", 0.3), ("val", 0.233), ("test", 0.467)), 300_001, long=True),
    "referit": _Flavour((("train", 0.3), ("val", 0.233), ("test", 0.467)), 1),
}


def vocab_tokens() -> list[str]:
    """The lines of vocab.txt: special tokens first ([PAD] = 0), then every word of the synthetic grammar and of
    the source captions (shared with the pretrained tiny encoders, see harness/pretrain.py)."""
    return [*SPECIAL_TOKENS, *vocabulary()]


def _image_file(name: str, image_id: int) -> str:
    return f"{image_id}.jpg" if name == "referit" else f"COCO_train2014_{image_id:012d}.jpg"


def _split_plan(flavour: _Flavour, images: int, rng: random.Random) -> list[str]:
    plan = []
    for split, fraction in flavour.image_splits[1:]:
        plan += [split] * max(1, round(fraction * images))
    plan = [flavour.image_splits[0][0]] * (images - len(plan)) + plan
    rng.shuffle(plan)
    return plan


def _target_shapes(split: str) -> tuple[str, ...]:
    if split == "testA":
        return (PERSON_SHAPE,)
    if split == "testB":
        return tuple(s for s in SHAPES if s != PERSON_SHAPE)
    return SHAPES


def _image_refs(rng: random.Random, flavour: _Flavour, split: str):
    """Sample scenes until one has at least two describable targets of the split's shapes."""
    shapes = _target_shapes(split)
    while True:
        scene = sample_scene(rng, shapes)
        if scene is None:
            continue
        refs = []
        for i, obj in enumerate(scene.objects):
            desc = describe(i, scene.objects, rng, flavour.locations) if obj.shape in shapes else None
            if desc is not None:
                refs.append((i, elaborate(desc, i, scene.objects, rng) if flavour.long else desc))
        if len(refs) >= 2:
            rng.shuffle(refs)
            return scene, sorted(refs[: rng.choice((2, 3, 3, 4))], key=lambda ref: ref[0])


def _write_name(root: Path, name: str, seed: int, images: int) -> dict:
    spec, flavour = get_spec(name), FLAVOURS[name]
    rng = random.Random(f"synth:{seed}:{name}")
    image_dir = root / "ln_data" / spec.image_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, list] = {split: [] for split in spec.splits if split != "trainval"}
    scenes, ref_count = {}, 0
    for k, split in enumerate(_split_plan(flavour, images, rng)):
        image_id = flavour.first_image_id + k
        file = _image_file(name, image_id)
        scene, refs = _image_refs(rng, flavour, split)
        try:
            render(scene, np.random.default_rng(rng.getrandbits(64))).save(image_dir / file, quality=92)
        except OSError as err:  # PIL's failed write names no file
            raise write_error(err, image_dir / file, disk_full(image_dir)) from None
        scenes[file] = {"width": scene.width, "height": scene.height, "objects": [
            {"ann_id": image_id * 10 + i, "box": list(o.box), "shape": o.shape, "colour": o.colour, "size": o.size}
            for i, o in enumerate(scene.objects)]}
        for i, desc in refs:
            ref_count += 1
            ref_split = "val" if flavour.val_every and ref_count % flavour.val_every == 0 else split
            x1, y1, x2, y2 = scene.objects[i].box
            box = [x1, y1, x2 - x1, y2 - y1] if spec.bbox_format == "xywh" else [x1, y1, x2, y2]
            for sentence in sentences(desc, flavour.long):
                if resolve(parse(sentence), scene.objects) != [i]:
                    raise AssertionError(f"synthetic grammar bug: {sentence!r} does not pick object {i} of {file}")
                records[ref_split].append((file, image_id * 10 + i, box, sentence, []))
    index_dir = root / "data" / name
    index_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in records.items():
        rows.sort(key=lambda row: row[0])  # DMS order: by file name, refs and sentences kept in order
        _save(rows, index_dir / f"{name}_{split}.pth")
    if name == "referit":  # the only name whose trainval is a file of its own
        _save(records["train"] + records["val"], index_dir / f"{name}_trainval.pth")
    return {"records": {split: len(rows) for split, rows in records.items()}, "scenes": scenes}


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_torch(obj, tmp)
    os.replace(tmp, path)


def generate(root, seed: int = 13, images: int | None = None) -> str:
    """Write all five names under `root` and return a printable summary."""
    images = DEFAULT_IMAGES if images is None else images
    if not MIN_IMAGES <= images <= MAX_IMAGES:
        raise DataError(f"{images} synthetic images per name is out of range: use {MIN_IMAGES} to {MAX_IMAGES} "
                        "(`harness data synth --images`, `harness run --synthetic-images`)")
    root, start = Path(root), time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    results = {name: _write_name(root, name, seed, images) for name in FLAVOURS}
    (root / "vocab.txt").write_text("\n".join(vocab_tokens()) + "\n")
    scenes = {"generator_version": GENERATOR_VERSION, "seed": seed, "images_per_name": images, "box_format": "xyxy",
              "datasets": {name: result["scenes"] for name, result in results.items()}}
    (root / "scenes.json").write_text(json.dumps(scenes, indent=1, sort_keys=True))
    lines = [f"synthetic data (seed {seed}, {images} images per name) in {root}, "
             f"{time.perf_counter() - start:.1f} s:"]
    for name, result in results.items():
        counts = "  ".join(f"{split} {count}" for split, count in result["records"].items())
        lines.append(f"  {name:<9} {counts}")
    return "\n".join(lines)


def write_synthetic(root, seed: int = 13, images: int | None = None, force: bool = False) -> str:
    """`harness data synth`: the set at `root`, built in a temporary folder and renamed into place (a full disk
    leaves nothing half-written). A non-empty folder that is not a synthetic set (no scenes.json) is refused
    unless `force`, which replaces the whole folder."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file, not a folder: choose another --root")
    if root.is_dir() and any(root.iterdir()) and not (root / "scenes.json").is_file() and not force:
        raise DataError(f"{root} is not empty and holds no synthetic set (no scenes.json): choose an empty folder, "
                        "or pass --force to replace the whole folder")
    if (root / "scenes.json").is_file() and not force:  # a set of ours: replace what it wrote, keep the user's files
        tmp = temp_dir(root.parent, f".{root.name}.", ".tmp")
        try:
            summary = generate(tmp, seed=seed, images=images)
            replace_entries(tmp, root, _generated(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with building(root) as tmp:
            summary = generate(tmp, seed=seed, images=images)
    return summary.replace(str(tmp), str(root))


def _generated(root: Path) -> list[Path]:
    """What `generate` writes, relative to its root: each name's index folder and image folder, the vocabulary, and
    scenes.json last (it marks a complete set)."""
    image_dirs = dict.fromkeys(Path("ln_data") / get_spec(name).image_dir for name in FLAVOURS)
    return [*(Path("data") / name for name in FLAVOURS), *image_dirs, Path("vocab.txt"), Path("scenes.json")]


def ensure_synthetic(cache_dir, seed: int = 13, images: int | None = None) -> Path:
    """Generate once into cache_dir/synth-v{GENERATOR_VERSION}-seed{seed}-n{images}; a half-written set is never
    visible there."""
    images = DEFAULT_IMAGES if images is None else images
    cache_dir = Path(cache_dir)
    root = cache_dir / f"synth-v{GENERATOR_VERSION}-seed{seed}-n{images}"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(cache_dir, f".{root.name}-")
    try:
        generate(tmp, seed=seed, images=images)
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():  # not a lost race with another process that finished first
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
