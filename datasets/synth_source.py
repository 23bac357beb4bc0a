"""The synthetic *source* task that stands in for the encoders' real pretraining (DETR on COCO detection,
BERT on text): scenes and captions drawn from other distributions than the synthetic REC sets, over the same
categories and the same vocabulary (as COCO shares RefCOCO's categories and BERT's vocabulary is RefCOCO's).

Source scenes differ from the target scenes (synth_scenes.sample_scene) in every way that is not the
category set: square or near-square canvases (the targets are 4:3 / 3:2), 4-7 objects of independently
drawn shape and colour with sizes from a continuous range (the targets: 3-4 objects, two size classes, a
same-shape distractor and often a duplicate), fill colours jittered around the named ones, and a linear
gradient with stripes as background (the targets: blotchy texture). Every object is labelled, none is referred.

Source captions are scene descriptions in a grammar that the referring expressions never use: lists ("there
is a big red circle and a small blue star"), counts ("the picture shows five objects"), pairwise statements
("a red circle is left of a blue star"), written over exactly the synthetic vocabulary (synth_grammar.vocabulary,
which also holds these source-only words) so that token ids are the same in transfer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from datasets.synth_scenes import COLOURS, MARGIN, SHAPES, Obj, Scene, boxes_apart, draw_objects

SOURCE_CANVASES = ((200, 200), (224, 224), (240, 240), (240, 224), (224, 240), (208, 208))
SOURCE_OBJECTS = (4, 7)
SOURCE_SIDES = (28, 84)  # continuous; "small" below the middle, "big" above (for captions)
COLOUR_JITTER = 24  # per channel, around the named colour
COUNT_WORDS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
# Words only the source captions use; synth_grammar.vocabulary() includes them so both tasks share ids.
SOURCE_WORDS = ("and", "objects", "shows", "next", *COUNT_WORDS.values())


@dataclass(frozen=True)
class SourceImage:
    scene: Scene
    fills: tuple  # RGB per object


def sample_source_scene(rng: random.Random) -> Scene:
    width, height = rng.choice(SOURCE_CANVASES)
    while True:
        count = rng.randint(*SOURCE_OBJECTS)
        objects: list[Obj] = []
        for _ in range(count):
            side = rng.randint(*SOURCE_SIDES)
            size = "small" if side < sum(SOURCE_SIDES) / 2 else "big"
            for _ in range(50):
                x, y = rng.randint(MARGIN, width - MARGIN - side), rng.randint(MARGIN, height - MARGIN - side)
                box = (x, y, x + side, y + side)
                if all(boxes_apart(box, other.box) for other in objects):
                    objects.append(Obj(box, rng.choice(SHAPES), rng.choice(list(COLOURS)), size))
                    break
        if len(objects) >= SOURCE_OBJECTS[0] - 1:  # crowded canvases may fit one fewer
            return Scene(width, height, tuple(objects))


def render_source(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Linear two-colour gradient with faint stripes and grain, then the objects with jittered fills."""
    h, w = scene.height, scene.width
    c0, c1 = rng.integers(185, 245, size=3).astype(np.float32), rng.integers(185, 245, size=3).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = (np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
         + np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(angle)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    stripes = np.sin(t * np.float32(rng.uniform(6, 18) * np.pi)) * np.float32(rng.uniform(2, 6))
    grain = rng.standard_normal((h, w), dtype=np.float32) * np.float32(3.0)
    pixels = c0 + (c1 - c0) * t[..., None] + (stripes + grain)[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    fills = [tuple(int(v) for v in np.clip(np.array(COLOURS[o.colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1,
                                                                                     size=3), 0, 255))
             for o in scene.objects]
    return draw_objects(image, scene.objects, fills)


# ---- captions ----------------------------------------------------------------------------------------------

def _np(obj: Obj, rng: random.Random) -> str:
    words = [w for w, keep in ((obj.size, rng.random() < 0.5), (obj.colour, rng.random() < 0.8)) if keep]
    return " ".join([*words, obj.shape])


def _centre(obj: Obj):
    return (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2


def caption(scene: Scene, rng: random.Random) -> str:
    """One description of a source scene, in one of the source grammar's forms."""
    objects = list(scene.objects)
    kind = rng.randrange(4)
    if kind == 0:  # list, in reading order
        objects.sort(key=lambda o: (_centre(o)[1] // 60, _centre(o)[0]))
        return "there is " + " and ".join("a " + _np(o, rng) for o in objects[: rng.randint(2, 4)])
    if kind == 1:  # count
        return f"the picture shows {COUNT_WORDS[len(objects)]} objects"
    a, b = rng.sample(objects, 2)
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if kind == 2:  # pairwise statement from the geometry
        if abs(ax - bx) >= abs(ay - by):
            relation = "left of" if ax < bx else "right of"
        else:
            relation = "above" if ay < by else "below"
        return f"a {_np(a, rng)} is {relation} a {_np(b, rng)}"
    if ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5 < 90:  # neighbours
        return f"a {_np(a, rng)} next to a {_np(b, rng)}"
    return f"the picture shows a {_np(a, rng)} and a {_np(b, rng)}"


def captions(count: int, seed: int) -> list[str]:
    rng = random.Random(f"source-captions:{seed}")
    return [caption(sample_source_scene(rng), rng) for _ in range(count)]
