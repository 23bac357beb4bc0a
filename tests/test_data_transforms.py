"""TransVG transforms: flip semantics, letterbox/pad geometry, scaled constants, RandomSelect, reproducibility, and
the uint8 pipeline against the PIL one (eval bit-identical, training draw for draw, jitter level for level)."""
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
from datasets.transforms import (ENHANCERS, IMAGENET_MEAN, IMAGENET_STD, RandomResize, RandomSelect,
                                 RandomSizeCrop, box_to_pixels, color_jitter, cxcywh_to_xyxy, hflip, make_transforms,
                                 model_inputs, swap_left_right, to_uint8_tensor, xyxy_to_cxcywh)


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
    # fused forms typed in RefCOCO, which TransVG's substring replace swaps (review round 3)
    ("leftguy", "rightguy"), ("lefthalf of pizza", "righthalf of pizza"), ("rightcorner", "leftcorner"),
    ("lefthandside", "righthandside"), ("toprightcorner", "topleftcorner"), ("lefty", "righty"),
    ("guyonleft", "guyonright"), ("leftright", "rightleft"), ("Leftguy", "Rightguy"),
]
NOT_SIDE_WORDS = ["bright", "upright", "copyright", "alright", "leftover", "leftovers", "righteous", "rights",
                  "downright", "outright", "birthright", "brightest", "frightened", "wright", "cleft", "brighter",
                  "brightly", "fright", "rightful", "aright"]


def transvg_swap(text: str) -> str:
    """TransVG's RandomHorizontalFlip text rule (datasets/transforms.py:154 @c862427), on lower-cased text."""
    return text.replace("right", "*&^special^&*").replace("left", "right").replace("*&^special^&*", "left")


@pytest.mark.parametrize("text, mirrored", SIDE_WORDS)
def test_swap_left_right_mirrors_every_side_word(text, mirrored):
    assert swap_left_right(text) == mirrored
    assert swap_left_right(mirrored) == text


@pytest.mark.parametrize("text, mirrored", SIDE_WORDS)
def test_swap_left_right_agrees_with_transvg_on_side_words(text, mirrored):
    assert swap_left_right(text.lower()) == transvg_swap(text.lower())


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


# ---- the uint8 pipeline against the PIL one it replaced ----------------------------------------------------

def _photo(seed, size=(230, 170)):
    """Smooth content with edges, as resampling sees in photos (pure noise exaggerates kernel differences)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    img.paste(tuple(int(v) for v in rng.integers(0, 256, 3)), (20, 30, 90, 120))
    return img


def _previous_eval(img, box, image_size):
    """The eval pipeline as it was: PIL resize, then TransVG's ToTensor + NormalizeAndPad in float."""
    import torchvision.transforms.functional as F

    out = RandomResize([image_size])({"img": img, "box": box, "text": "x"})
    x = F.normalize(F.to_tensor(out["img"]), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    h, w = x.shape[1:]
    top, left = round((image_size - h) / 2.0 - 0.1), round((image_size - w) / 2.0 - 0.1)
    canvas = torch.zeros(3, image_size, image_size)
    canvas[:, top:top + h, left:left + w] = x
    return canvas


@pytest.mark.parametrize("size", [(230, 170), (170, 230), (640, 480)])
@pytest.mark.parametrize("image_size", [160, 640])
def test_eval_input_is_bit_identical_to_transvg_to_tensor_normalize_and_pad(size, image_size):
    img, box = _photo(1, size), torch.tensor([5.0, 6.0, 100.0, 120.0])
    out = make_transforms(image_size, train=False)({"img": img, "box": box.clone(), "text": "x"})
    assert out["img"].dtype == torch.uint8 and "jitter" not in out
    batch = model_inputs(collate_like(out), "cpu")
    assert torch.equal(batch["image"][0], _previous_eval(img, box, image_size))


def collate_like(sample):
    return {"image": sample["img"][None], "image_mask": sample["mask"][None], "box": sample["box"][None],
            **({"jitter": sample["jitter"][None]} if "jitter" in sample else {})}


def _draws(transform, img, seed, text):
    random.seed(seed)
    torch.manual_seed(seed)
    out = transform({"img": img, "box": torch.tensor([40.0, 30.0, 150.0, 140.0]), "text": text})
    return out, (random.getstate(), torch.get_rng_state())


@pytest.mark.parametrize("defer", [False, True])
def test_uint8_training_pipeline_matches_the_pil_one_draw_for_draw(defer):
    """Same seeds -> the same draws in the same order, so geometry, flips, texts, padding and jitter factors are
    exactly the PIL pipeline's; pixels differ only by torchvision's resampling kernel (within 2 grey levels before
    the jitter, 5 after its factors scale them)."""
    pil_pipeline = make_transforms(160, train=True)
    uint8_pipeline = make_transforms(160, train=True, defer_jitter=defer)
    img = _photo(2)
    crops = flips = 0
    for seed in range(40):
        text = "the left cup" if seed % 3 == 0 else "the red cup"
        a, state_a = _draws(pil_pipeline, img, seed, text)
        b, state_b = _draws(uint8_pipeline, to_uint8_tensor(img), seed, text)
        assert state_a[0] == state_b[0] and torch.equal(state_a[1], state_b[1])  # nothing drawn more or less
        assert torch.equal(a["box"], b["box"]) and torch.equal(a["mask"], b["mask"]) and a["text"] == b["text"]
        assert ("jitter" in b) == defer
        x, y = model_inputs(collate_like(a), "cpu")["image"], model_inputs(collate_like(b), "cpu")["image"]
        levels = ((x - y) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
        assert levels.max() <= 5.01 and levels.mean() < 0.05  # 2 levels of resampling, scaled by up to 3 factors <= 1.4
        crops += (~a["mask"]).sum().item() < 0.5 * 160 * 160
        flips += a["text"] != text
    assert crops and flips  # the draws above did exercise the crop and the flip


@pytest.mark.parametrize("seed", range(6))
def test_deferred_jitter_equals_pil_enhance_level_for_level(seed):
    rng = random.Random(seed)
    img = _photo(seed, (120, 90))
    canvas = torch.zeros(1, 3, 128, 128)
    canvas[0, :, 7:97, 3:123] = to_uint8_tensor(img).float()
    valid = torch.zeros(1, 128, 128, dtype=torch.bool)
    valid[0, 7:97, 3:123] = True
    factors, expected = torch.ones(1, 3, 3), img
    for position, k in enumerate(rng.sample(range(3), 3)):
        factor = rng.uniform(0.6, 1.4)
        factors[0, position, k] = factor
        expected = ENHANCERS[k](expected).enhance(factor)
    out = color_jitter(canvas, valid, factors)
    assert torch.equal(out[0, :, 7:97, 3:123], to_uint8_tensor(expected).float())  # contrast's mean: unpadded only
    assert torch.equal(color_jitter(canvas, valid, torch.ones(1, 3, 3)), canvas)  # no draw, no change


@pytest.mark.parametrize("train,defer", [(True, False), (True, True), (False, False)])
def test_decoded_image_cache_gives_the_same_samples(synth_root, train, defer):
    """Two epochs from the cache (the second never decodes) equal the same epochs decoded every time."""
    from datasets.rec import RECDataset
    from datasets.tokenize import build_tokenizer

    def epochs(cache):
        ds = RECDataset(resolve_paths(synth_root), "unc", "train" if train else "val",
                        build_tokenizer(synth_root / "vocab.txt"), 96, train=train, defer_jitter=defer,
                        cache_images=cache)
        random.seed(3)
        torch.manual_seed(3)
        items = [ds[i] for _ in range(2) for i in range(8)]
        return items, ds.decoded

    plain, _ = epochs(False)
    cached, store = epochs(True)
    assert 0 < len(store) <= 8  # one entry per image file read
    for a, b in zip(plain, cached):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                            for k in a)
