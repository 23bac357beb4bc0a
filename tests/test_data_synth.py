"""The synthetic generator: layout, per-name traits, uniqueness under the grammar, a text-blind baseline far
below the oracle, determinism, atomic caching."""
import json

import pytest
import torch

import datasets.synth as synth
from datasets.catalog import resolve_paths
from datasets.index import load_split
from datasets.synth_grammar import parse, resolve
from datasets.synth_scenes import PERSON_SHAPE, Obj
from datasets.tokenize import build_tokenizer

SPLITS = {"unc": ["train", "val", "testA", "testB"], "unc+": ["train", "val", "testA", "testB"],
          "gref": ["train", "val"], "gref_umd": ["train", "val", "test"], "referit": ["train", "val", "test"]}
LOCATION_WORDS = {"left", "right", "top", "bottom", "middle", "above", "below", "over", "under"}


@pytest.fixture(scope="module")
def data(synth_root):
    """{name: {split: [(record, scene, target index)]}} for the session's synthetic set."""
    scenes = json.loads((synth_root / "scenes.json").read_text())["datasets"]
    paths = resolve_paths(synth_root)
    out = {}
    for name, splits in SPLITS.items():
        out[name] = {}
        for split in splits:
            rows = []
            for record in load_split(paths, name, split):
                scene = scenes[name][record.image_file]
                (target,) = [i for i, o in enumerate(scene["objects"]) if tuple(map(float, o["box"])) == record.box]
                rows.append((record, scene, target))
            out[name][split] = rows
    return out


def objects(scene):
    return [Obj(tuple(o["box"]), o["shape"], o["colour"], o["size"]) for o in scene["objects"]]


def test_layout_and_image_split_sizes(synth_root, data):
    assert (synth_root / "data/referit/referit_trainval.pth").is_file()
    assert (synth_root / "ln_data/other/images/mscoco/images/train2014/COCO_train2014_000000000001.jpg").is_file()
    assert (synth_root / "ln_data/referit/images/1.jpg").is_file()
    images = {split: len({r.image_file for r, _, _ in rows}) for split, rows in data["unc"].items()}
    assert images == {"train": 9, "val": 7, "testA": 7, "testB": 7}  # 30 images: 30/23.3/23.3/23.3 %
    assert {split: len({r.image_file for r, _, _ in rows}) for split, rows in data["gref_umd"].items()} == \
        {"train": 9, "val": 7, "test": 14}  # 30/23.3/46.7 %
    paths = resolve_paths(synth_root)
    assert load_split(paths, "referit", "trainval") == load_split(paths, "referit", "train") + \
        load_split(paths, "referit", "val")


def test_raw_tuples_are_transvg_formats(synth_root):
    unc = torch.load(synth_root / "data/unc/unc_train.pth", weights_only=True)
    file, ann_id, box, sentence, attri = unc[0]
    assert file.startswith("COCO_train2014_") and isinstance(ann_id, int) and attri == []
    assert all(isinstance(v, int) for v in box) and box[2] > 0 and box[3] > 0  # xywh
    referit = torch.load(synth_root / "data/referit/referit_test.pth", weights_only=True)
    x1, y1, x2, y2 = referit[0][2]
    assert x2 > x1 and y2 > y1 and referit[0][0].endswith(".jpg")
    assert [row[0] for row in unc] == sorted(row[0] for row in unc)  # DMS order


def test_every_expression_picks_exactly_its_target(data):
    count = 0
    for name, splits in data.items():
        for rows in splits.values():
            for record, scene, target in rows:
                assert resolve(parse(record.phrase), objects(scene)) == [target], (name, record)
                count += 1
    assert count > 600


def test_two_paraphrases_per_target_and_every_image_has_two_refs(data):
    for splits in data.values():
        for rows in splits.values():
            per_target = {}
            for record, _, target in rows:
                per_target.setdefault((record.image_file, target), []).append(record.phrase)
            assert all(len(p) == 2 and p[0] != p[1] for p in per_target.values())
    unc_refs = {}
    for rows in data["unc"].values():
        for record, _, target in rows:
            unc_refs.setdefault(record.image_file, set()).add(target)
    assert min(len(t) for t in unc_refs.values()) >= 2


def test_text_blind_baselines_fall_far_below_the_oracle(data):
    def accuracy(pick):
        hits = total = 0
        for splits in data.values():
            for rows in splits.values():
                for record, scene, target in rows:
                    hits += pick(record, scene) == target
                    total += 1
        return hits / total

    def reader(record, scene):  # the oracle reads the expression
        (index,) = resolve(parse(record.phrase), objects(scene))
        return index

    def largest(record, scene):
        areas = [(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in scene["objects"]]
        return areas.index(max(areas))

    def central(record, scene):
        dist = [((o["box"][0] + o["box"][2]) / 2 - scene["width"] / 2) ** 2 +
                ((o["box"][1] + o["box"][3]) / 2 - scene["height"] / 2) ** 2 for o in scene["objects"]]
        return dist.index(min(dist))

    assert accuracy(reader) == 1.0
    assert accuracy(largest) < 0.4 and accuracy(central) < 0.4


def test_name_traits(data):
    unc_plus = [r.phrase for rows in data["unc+"].values() for r, _, _ in rows]
    assert not any(LOCATION_WORDS & set(p.split()) for p in unc_plus)
    unc = [r.phrase for rows in data["unc"].values() for r, _, _ in rows]
    assert sum(bool(LOCATION_WORDS & set(p.split())) for p in unc) > 20
    for name in ("unc", "unc+"):
        assert {objects(s)[t].shape for _, s, t in data[name]["testA"]} == {PERSON_SHAPE}
        assert PERSON_SHAPE not in {objects(s)[t].shape for _, s, t in data[name]["testB"]}
    gref_images = [{r.image_file for r, _, _ in data["gref"][split]} for split in ("train", "val")]
    assert gref_images[0] & gref_images[1]  # google split: objects, not images, are partitioned
    for name in ("unc", "unc+", "gref_umd", "referit"):
        seen = [{r.image_file for r, _, _ in rows} for rows in data[name].values()]
        assert sum(len(s) for s in seen) == len(set().union(*seen))

    def mean_words(name):
        phrases = [r.phrase for rows in data[name].values() for r, _, _ in rows]
        return sum(len(p.split()) for p in phrases) / len(phrases)

    assert mean_words("gref") > mean_words("unc") + 2 and mean_words("gref_umd") > mean_words("unc") + 2
    assert data["unc"]["train"][0][1]["objects"] != data["unc+"]["train"][0][1]["objects"]  # own seed per name


def test_vocabulary_never_splits_and_has_no_left_right_substrings(synth_root, data):
    words = (synth_root / "vocab.txt").read_text().split()
    assert words[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [w for w in words if ("left" in w or "right" in w)] == ["left", "right"]
    tokenizer = build_tokenizer(synth_root / "vocab.txt")
    phrases = {r.phrase for splits in data.values() for rows in splits.values() for r, _, _ in rows}
    for phrase in phrases:
        assert tokenizer.tokenize(phrase) == phrase.split()


def test_objects_are_apart_and_visible(data):
    for splits in data.values():
        for rows in splits.values():
            for _, scene, _ in rows:
                boxes = [o["box"] for o in scene["objects"]]
                assert 3 <= len(boxes) <= 6 and 160 <= min(scene["width"], scene["height"])
                assert max(scene["width"], scene["height"]) <= 240 and scene["width"] != scene["height"]
                for i, a in enumerate(boxes):
                    assert min(a[2] - a[0], a[3] - a[1]) >= 24
                    for b in boxes[i + 1:]:
                        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_same_seed_same_bytes(tmp_path):
    synth.generate(tmp_path / "a", seed=5, images=6)
    synth.generate(tmp_path / "b", seed=5, images=6)
    synth.generate(tmp_path / "c", seed=6, images=6)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 5 * 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    index = "data/unc/unc_train.pth"
    assert (tmp_path / "a" / index).read_bytes() != (tmp_path / "c" / index).read_bytes()


def test_ensure_synthetic_is_atomic_and_cached(tmp_path, monkeypatch):
    def broken(root, seed, images):
        (root / "data").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", broken)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_synthetic(tmp_path, seed=2, images=6)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    root = synth.ensure_synthetic(tmp_path, seed=2, images=6)
    name = f"synth-v{synth.GENERATOR_VERSION}-seed2-n6"  # the version in the name: an older set is never reused
    assert root == tmp_path / name and (root / "data/unc/unc_train.pth").is_file()
    stamp = (root / "scenes.json").stat().st_mtime_ns
    assert synth.ensure_synthetic(tmp_path, seed=2, images=6) == root
    assert (root / "scenes.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [name]
