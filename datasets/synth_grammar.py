"""Referring expressions for synthetic scenes: the shortest unique description, its paraphrases, and the
semantics (parse + resolve) that every generated sentence is checked against.

Semantics, on objects of one scene:
- attributes (shape, colour, size) keep the objects that have them;
- a relation ("left of", "right of", "above", "below" an anchor described by its own attributes, which must
  pick exactly one object) keeps the objects whose box lies entirely on that side of the anchor's box;
- a position keeps the extreme object along x ("left", "right") or y ("top", "bottom"), or the median along x of
  exactly three ("middle").
An expression is correct when `resolve(parse(text), objects)` is exactly its target.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from datasets.synth_scenes import COLOURS, SHAPES, SIDES, Obj
from datasets.synth_source import SOURCE_WORDS

POSITIONS = ("left", "right", "top", "bottom", "middle")
RELATIONS = ("left of", "right of", "above", "below")
# Only clear cases are described: the target beats every competitor by this many pixels (centres for
# positions, box edges for relations), so the expression stays true to the eye after resizing.
CLEAR_PX = 10

_RELATION_WORDS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
                   "above": ("above", "over"), "below": ("below", "under")}
_PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "middle": "in the middle"}
# Two paraphrase templates per kind; "long" is the RefCOCOg flavour.
_TEMPLATES = {
    ("attributes", False): ("the {np}", "{np}"),
    ("attributes", True): ("the {np} in the picture", "there is a {np} here"),
    ("position", False): ("the {np} {place}", "{pos} {np}"),
    ("position", True): ("the {np} which is {place}", "there is a {np} {place}"),
    ("relation", False): ("the {np} {rel0} the {anchor}", "{np} {rel1} {anchor}"),
    ("relation", True): ("the {np} that is {rel0} the {anchor}", "a {np} which is {rel1} a {anchor}"),
}


@dataclass(frozen=True)
class Desc:
    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    relation: str | None = None
    anchor: "Desc | None" = None


def vocabulary() -> list[str]:
    """Every word of the referring expressions, plus the source captions' own words (synth_source): the
    encoders pretrained on the source task and the REC sets then share one vocab.txt, so token ids agree."""
    words = set(SHAPES) | set(COLOURS) | set(SIDES) | set(POSITIONS) | set(SOURCE_WORDS)
    phrases = [*_PLACE.values(), *(p for group in (*_RELATION_WORDS.values(), *_TEMPLATES.values()) for p in group)]
    for phrase in phrases:
        words |= set(re.sub(r"\{\w+\}", " ", phrase).split())
    return sorted(words)


# ---- semantics ---------------------------------------------------------------------------------------------

def _has(obj: Obj, desc: Desc) -> bool:
    return (obj.shape == desc.shape and desc.colour in (None, obj.colour) and desc.size in (None, obj.size))


def _side_margin(relation: str, box, anchor) -> int:
    """How far `box` lies on `relation`'s side of `anchor` (>= 0: it does)."""
    if relation == "left of":
        return anchor[0] - box[2]
    if relation == "right of":
        return box[0] - anchor[2]
    if relation == "above":
        return anchor[1] - box[3]
    return box[1] - anchor[3]


def _centre(obj: Obj, position: str) -> float:
    x1, y1, x2, y2 = obj.box
    return (x1 + x2) / 2 if position in ("left", "right", "middle") else (y1 + y2) / 2


def _pick_position(candidates: list[int], objects, position: str) -> list[int]:
    values = {i: _centre(objects[i], position) for i in candidates}
    if position == "middle":
        if len(candidates) != 3:
            return []
        target = sorted(values.values())[1]
    else:
        target = (min if position in ("left", "top") else max)(values.values(), default=None)
    return [i for i in candidates if values[i] == target]


def resolve(desc: Desc, objects) -> list[int]:
    candidates = [i for i, obj in enumerate(objects) if _has(obj, desc)]
    if desc.relation:
        anchors = resolve(desc.anchor, objects)
        if len(anchors) != 1:
            return []
        anchor = objects[anchors[0]].box
        candidates = [i for i in candidates
                      if i != anchors[0] and _side_margin(desc.relation, objects[i].box, anchor) >= 0]
    if desc.position:
        candidates = _pick_position(candidates, objects, desc.position)
    return candidates


def parse(text: str) -> Desc:
    """Read an expression of this grammar back into a Desc (filler words are ignored)."""
    words = text.split()
    head, relation, tail = words, None, []
    for i, word in enumerate(words):
        if word in ("left", "right") and i + 1 < len(words) and words[i + 1] == "of":
            head, relation, tail = words[:i], f"{word} of", words[i + 2:]
            break
        if word in ("above", "over", "below", "under"):
            head, relation, tail = words[:i], "above" if word in ("above", "over") else "below", words[i + 1:]
            break

    def attributes(part):
        shapes = [w for w in part if w in SHAPES]
        if len(shapes) != 1:
            raise ValueError(f"expected one shape word in {' '.join(part)!r}")
        return Desc(shapes[0], next((w for w in part if w in COLOURS), None),
                    next((w for w in part if w in SIDES), None))

    desc = replace(attributes(head), position=next((w for w in head if w in POSITIONS), None))
    return replace(desc, relation=relation, anchor=attributes(tail)) if relation else desc


# ---- choosing a description --------------------------------------------------------------------------------

def _clear_position(target: int, desc: Desc, objects) -> bool:
    candidates = resolve(replace(desc, position=None), objects)
    if len(candidates) < 2 or resolve(desc, objects) != [target]:
        return False
    own = _centre(objects[target], desc.position)
    others = [_centre(objects[i], desc.position) for i in candidates if i != target]
    return all(abs(own - value) >= CLEAR_PX for value in others)


def _clear_relation(target: int, desc: Desc, objects) -> bool:
    if resolve(desc, objects) != [target]:
        return False
    anchor_index = resolve(desc.anchor, objects)[0]
    anchor = objects[anchor_index].box
    rivals = [i for i in resolve(replace(desc, relation=None, anchor=None), objects) if i not in (target, anchor_index)]
    return all(_side_margin(desc.relation, objects[i].box, anchor) <= -CLEAR_PX for i in rivals)


def _attribute_descs(obj: Obj) -> list[Desc]:
    return [Desc(obj.shape), Desc(obj.shape, obj.colour), Desc(obj.shape, size=obj.size),
            Desc(obj.shape, obj.colour, obj.size)]


def _relation_options(target: int, base: Desc, objects, clear: bool) -> list[Desc]:
    options = []
    for j, other in enumerate(objects):
        if j == target:
            continue
        # Anchors are named by shape or colour + shape alone, so the expression stays one relation deep.
        anchor = next((d for d in _attribute_descs(other)[:2] if resolve(d, objects) == [j]), None)
        if anchor is None:
            continue
        for relation in RELATIONS:
            desc = replace(base, relation=relation, anchor=anchor)
            ok = (_clear_relation(target, desc, objects) if clear
                  else _side_margin(relation, objects[target].box, objects[j].box) >= CLEAR_PX)
            if ok:
                options.append(desc)
    return options


def describe(target: int, objects, rng: random.Random, locations: bool = True) -> Desc | None:
    """The shortest unique description: category, colour, size, then (with `locations`) position, relation."""
    attrs = _attribute_descs(objects[target])
    for desc in attrs:
        if resolve(desc, objects) == [target]:
            return desc
    if not locations:
        return None
    bases = (attrs[0], attrs[1], attrs[3])
    for base in bases:
        options = [replace(base, position=p) for p in POSITIONS
                   if _clear_position(target, replace(base, position=p), objects)]
        if options:
            return rng.choice(options)
    for base in bases:
        options = _relation_options(target, base, objects, clear=True)
        if options:
            shortest = min(_length(d.anchor) for d in options)
            return rng.choice([d for d in options if _length(d.anchor) == shortest])
    return None


def _length(desc: Desc) -> int:
    return sum(v is not None for v in (desc.colour, desc.size))


def elaborate(desc: Desc, target: int, objects, rng: random.Random) -> Desc:
    """RefCOCOg flavour: add a true relation to an attribute-only description, else a missing attribute
    (unless that changes what it picks: "middle" needs exactly three candidates)."""
    if not (desc.position or desc.relation):
        options = _relation_options(target, desc, objects, clear=False)
        if options:
            return rng.choice(options)
    obj = objects[target]
    longer = replace(desc, colour=obj.colour) if desc.colour is None else replace(desc, size=obj.size)
    return longer if resolve(longer, objects) == [target] else desc


def sentences(desc: Desc, long: bool) -> list[str]:
    """Two paraphrases of `desc`."""
    noun = " ".join(w for w in (desc.size, desc.colour, desc.shape) if w)
    if desc.relation:
        kind = "relation"
        anchor = " ".join(w for w in (desc.anchor.size, desc.anchor.colour, desc.anchor.shape) if w)
        rel0, rel1 = _RELATION_WORDS[desc.relation]
        fields = {"np": noun, "anchor": anchor, "rel0": rel0, "rel1": rel1}
    elif desc.position:
        kind, fields = "position", {"np": noun, "pos": desc.position, "place": _PLACE[desc.position]}
    else:
        kind, fields = "attributes", {"np": noun}
    return [template.format(**fields) for template in _TEMPLATES[(kind, long)]]
