"""TransVG transforms: flip semantics, letterbox/pad geometry, scaled constants, RandomSelect, reproducibility."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.catalog import resolve_paths
from datasets.index import load_split
from datasets.synth_grammar import parse, resolve
from datasets.synth_scenes import COLOURS, Obj
from datasets.transforms import (RandomSelect, RandomSizeCrop, box_to_pixels, cxcywh_to_xyxy, hflip,
                                 make_transforms, swap_left_right, xyxy_to_cxcywh)


SIDE_WORDS = [  # (expression, its mirror): whole words, hyphenated and fused compounds, case kept
    ("left of the square right", "right of the square left"),
    ("the left-hand one, right?", "the right-hand one, left?"),
    ("leftmost cup", "rightmost cup"), ("the rightmost", "the leftmost"),
    ("topleft corner", "topright corner"), ("bottomright", "bottomleft"), ("upperleft", "upperright"),
    ("top-left", "top-right"), ("bottom right", "bottom left"), ("far-right guy", "far-left guy"),
    ("farleft", "farright"), ("lefthand side", "righthand side"), ("leftside", "rightside"),
    ("left-side", "right-side"), ("righthanded", "lefthanded"), ("leftward", "rightward"),
    ("left-most", "right-most"), ("Left Man", "Right Man"), ("RIGHT", "LEFT"), ("left.", "right."),
    ("2nd from left", "2nd from right"), ("(left)", "(right)"), ("lefter one", "righter one"),
]
NOT_SIDE_WORDS = ["bright", "upright", "copyright", "alright", "leftover", "leftovers", "righteous", "rights",
                  "downright", "outright", "birthright", "brightest", "frightened", "wright", "cleft", "brighter"]


@pytest.mark.parametrize("text, mirrored", SIDE_WORDS)
def test_swap_left_right_mirrors_every_side_word(text, mirrored):
    assert swap_left_right(text) == mirrored
    assert swap_left_right(mirrored) == text


@pytest.mark.parametrize("word", NOT_SIDE_WORDS)
def test_swap_left_right_keeps_words_that_only_contain_the_letters(word):
    assert swap_left_right(word) == word
    assert swap_left_right(f"the {word} one on the left") == f"the {word} one on the right"


def test_flip_twice_is_identity():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    sample = {"img": img, "box": torch.tensor([3.0, 4.0, 20.0, 25.0]), "text": "bright circle left of the square"}
    once = hflip(dict(sample))
    assert once["box"].tolist() == [30.0, 4.0, 47.0, 25.0]
    assert once["text"] == "bright circle right of the square"
    twice = hflip(dict(once))
    assert np.array_equal(np.asarray(twice["img"]), np.asarray(img))
    assert twice["box"].tolist() == sample["box"].tolist() and twice["text"] == sample["text"]


def test_flipped_box_still_covers_the_described_object(synth_root):
    scenes = json.loads((synth_root / "scenes.json").read_text())["datasets"]["unc"]
    paths = resolve_paths(synth_root)
    record = next(r for r in load_split(paths, "unc", "train") if "left" in r.phrase.split())
    scene = scenes[record.image_file]
    image = Image.open(paths.image_dir("unc") / record.image_file).convert("RGB")
    flipped = hflip({"img": image, "box": torch.tensor(record.box), "text": record.phrase})
    width = scene["width"]
    mirrored = [Obj((width - o["box"][2], o["box"][1], width - o["box"][0], o["box"][3]), o["shape"], o["colour"],
                    o["size"]) for o in scene["objects"]]
    assert "right" in flipped["text"].split() and "left" not in flipped["text"].split()
    (target,) = resolve(parse(flipped["text"]), mirrored)
    assert list(mirrored[target].box) == flipped["box"].tolist()
    # Without the text swap the flipped image would make the expression pick another object.
    assert resolve(parse(record.phrase), mirrored) != [target]
    x1, y1, x2, y2 = (int(v) for v in flipped["box"].tolist())
    centre = np.asarray(flipped["img"], dtype=int)[(y1 + y2) // 2, (x1 + x2) // 2]
    assert np.abs(centre - COLOURS[mirrored[target].colour]).max() < 40


def test_cxcywh_round_trip():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.9], [3.0, 4.0, 10.0, 8.0]])
    assert torch.allclose(xyxy_to_cxcywh(xyxy), torch.tensor([[0.3, 0.55, 0.4, 0.7], [6.5, 6.0, 7.0, 4.0]]))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


@pytest.mark.parametrize("size", [(240, 180), (180, 240), (333, 157), (640, 480)])
@pytest.mark.parametrize("image_size", [160, 640])
def test_eval_letterbox_round_trip(size, image_size):
    width, height = size
    box = torch.tensor([7.0, 11.0, width - 20.0, height - 9.0])
    out = make_transforms(image_size, train=False)({"img": Image.new("RGB", size, (90, 120, 200)),
                                                     "box": box.clone(), "text": "x"})
    assert out["img"].shape == (3, image_size, image_size) and out["mask"].dtype == torch.bool
    assert (box_to_pixels(out["box"], width, height, image_size) - box).abs().max() <= 1.0
    # Centred as TransVG: round(d / 2 - 0.1) of padding before the image, zeros (mask True) around it.
    rows, cols = torch.where(~out["mask"])
    long_side, short = max(width, height), round(min(width, height) * image_size / max(width, height))
    pad = round((image_size - short) / 2 - 0.1)
    first = (rows.min().item(), cols.min().item())
    assert first == ((pad, 0) if width == long_side else (0, pad))
    assert out["img"][:, out["mask"]].abs().max() == 0
    assert (~out["mask"]).sum() == image_size * short


def test_pixel_constants_are_transvg_at_640_and_scale():
    def constants(image_size):
        select = make_transforms(image_size, train=True).transforms[0]
        resize_short, crop, _ = select.crop.transforms
        return select.plain.sizes, resize_short.sizes, (crop.min_size, crop.max_size)

    assert constants(640) == ([640, 608, 576, 544, 512, 480, 448], [400, 500, 600], (384, 600))
    assert constants(160) == ([160, 152, 144, 136, 128, 120, 112], [100, 125, 150], (96, 150))


def test_random_select_never_crops_spatial_text():
    calls = []
    select = RandomSelect(lambda s: calls.append("plain") or s, lambda s: calls.append("crop") or s, p=1.0)
    for text in ["the top circle", "bright star", "middle one", "the red circle"]:
        select({"text": text})
    assert calls == ["plain", "plain", "plain", "crop"]  # "bright" contains "right": TransVG's substring test


def test_random_size_crop_keeps_box_inside_crop():
    random.seed(3)
    torch.manual_seed(3)
    crop = RandomSizeCrop(96, 150)
    for _ in range(20):
        out = crop({"img": Image.new("RGB", (200, 150)), "box": torch.tensor([120.0, 60.0, 180.0, 110.0])})
        w, h = out["img"].size
        assert 96 <= w <= 150 and 96 <= h <= 150 or (w, h) == (200, 150)
        x1, y1, x2, y2 = out["box"].tolist()
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


def test_train_augmentation_is_reproducible_from_global_seeds():
    transform = make_transforms(160, train=True)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (180, 240, 3), dtype=np.uint8))

    def run(seed):
        random.seed(seed)
        torch.manual_seed(seed)
        outs = [transform({"img": img, "box": torch.tensor([10.0, 20.0, 60.0, 70.0]), "text": "the red circle"})
                for _ in range(6)]
        return torch.stack([o["img"] for o in outs]), torch.stack([o["box"] for o in outs])

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
