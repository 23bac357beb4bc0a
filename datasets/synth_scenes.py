"""Synthetic scenes: coloured shapes on a lightly textured background, sampled and drawn with PIL."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
PERSON_SHAPE = "circle"  # plays RefCOCO's "people" category: testA targets are circles, testB the rest
COLOURS = {
    "red": (214, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 85, 215),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 185),
}
# Side lengths far apart so "small"/"big" stay obvious after letterboxing (x2/3 at 240 px canvases, 160 px
# input). Objects are large relative to the canvas, as RefCOCO targets are: at 160 px input a small one spans
# 36-46 px and a big one 64-80 px, 1.1-2.5 of the 5 x 5 visual tokens' 32-px cells. Generator version 2 (issue 28)
# made them 1.5x larger (they were 24-53 px at input) with 3-4 objects instead of 3-5 so that they still fit: the
# tiny fusion's plateau was mostly box precision (its predicted centre inside the target for 74% of val
# expressions while 38% reached IoU 0.5; results/benchmarks/fusion_levers_v1.json).
SIDES = {"small": (54, 69), "big": (96, 120)}
CANVASES = ((240, 180), (180, 240), (224, 168), (168, 224), (240, 160), (160, 240), (208, 176), (176, 208))
OBJECTS = (3, 4)  # objects per scene, inclusive
MARGIN = 4  # keeps outlines off the image border
GAP = 6  # minimum empty space between two objects' boxes


@dataclass(frozen=True)
class Obj:
    box: tuple[int, int, int, int]  # xyxy pixels; the shape spans it exactly
    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[Obj, ...]


def sample_scene(rng: random.Random, focus_shapes=SHAPES) -> Scene | None:
    """OBJECTS objects: one of `focus_shapes`, a same-shape other-colour distractor, often an exact duplicate that
    only position tells apart, the rest random; positions uniform. None when the objects do not fit."""
    width, height = rng.choice(CANVASES)
    count = rng.randint(*OBJECTS)
    shape, colour = rng.choice(focus_shapes), rng.choice(list(COLOURS))
    attrs = [(shape, colour, rng.choice(list(SIDES))),
             (shape, rng.choice([c for c in COLOURS if c != colour]), rng.choice(list(SIDES)))]
    if rng.random() < 0.5:
        attrs.append(attrs[0])
    while len(attrs) < count:
        attrs.append((rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIDES))))
    rng.shuffle(attrs)
    objects: list[Obj] = []
    for shape, colour, size in attrs:
        side = rng.randint(*SIDES[size])
        for _ in range(100):
            x, y = rng.randint(MARGIN, width - MARGIN - side), rng.randint(MARGIN, height - MARGIN - side)
            box = (x, y, x + side, y + side)
            if all(boxes_apart(box, other.box) for other in objects):
                objects.append(Obj(box, shape, colour, size))
                break
        else:
            return None
    return Scene(width, height, tuple(objects))


def boxes_apart(a, b) -> bool:
    """Two xyxy boxes with at least GAP pixels of empty space between them on one axis."""
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    base = rng.integers(200, 236, size=3)
    # Low-frequency blotches plus fine grain: texture that is clearly background, never shape-like.
    coarse = Image.fromarray(rng.integers(0, 256, size=(scene.height // 24 + 2, scene.width // 24 + 2),
                                          dtype=np.uint8))
    blotches = np.asarray(coarse.resize((scene.width, scene.height), Image.BILINEAR), dtype=np.float32)
    grain = rng.normal(0.0, 4.0, size=(scene.height, scene.width, 1))
    pixels = base + (blotches[..., None] - 128.0) * 0.12 + grain
    return draw_objects(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), scene.objects)


def draw_objects(image: Image.Image, objects, fills=None) -> Image.Image:
    """Draw each object's shape spanning its box, in its colour (or `fills[i]`, an RGB tuple), outlined."""
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(objects):
        x1, y1, x2, y2 = obj.box
        fill, outline = (fills[i] if fills else COLOURS[obj.colour]), (40, 40, 40)
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill, outline=outline, width=2)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill, outline=outline, width=2)
        else:
            draw.polygon(_polygon(obj.shape, x1, y1, x2 - 1, y2 - 1), fill=fill, outline=outline, width=2)
    return image


def _polygon(shape, x1, y1, x2, y2):
    if shape == "triangle":
        unit = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        unit = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    else:  # star: ten vertices, then stretched so that it spans its box like the other shapes
        raw = [(r * math.cos(math.radians(-90 + 36 * k)), r * math.sin(math.radians(-90 + 36 * k)))
               for k, r in zip(range(10), [1.0, 0.45] * 5)]
        xs, ys = [p[0] for p in raw], [p[1] for p in raw]
        unit = [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in raw]
    return [(x1 + u * (x2 - x1), y1 + v * (y2 - y1)) for u, v in unit]
