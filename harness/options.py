"""Typed option values for the dataclasses behind recipes and methods, and `--set KEY=VALUE` overrides.

Values come from YAML (method files, --config files, --set), so they arrive as YAML types; each is checked
against the field's annotation before any work starts, and a wrong one is a one-line HarnessError.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing

import yaml

from harness.errors import HarnessError


def _accepts(annotation, value) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # YAML reads 1e-4 as a string (no dot); 1.0e-4 and 3 are numbers
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and (not args or all(_accepts(args[0], v) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _type_name(annotation) -> str:
    """int | null, list, ... in YAML's words."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def check_values(cls, values: dict, what: str) -> dict:
    """`values` checked against the fields of dataclass `cls`: unknown keys and wrong types are one line each.
    Floats also take numbers YAML reads as strings ('1e-4'), the one YAML pitfall worth forgiving."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise HarnessError(f"unknown {what} option(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(known)) or 'none'}")
    out = {}
    for key, value in values.items():
        annotation = hints[key]
        if isinstance(value, str) and _accepts(annotation, 1.5) and not _accepts(annotation, value):
            try:
                value = float(value)
            except ValueError:
                pass
        if not _accepts(annotation, value):
            raise HarnessError(f"{what} option {key} must be {_type_name(annotation)}, got {value!r} "
                               f"({type(value).__name__})")
        if not _finite(value):  # YAML reads .inf and .nan as floats: a rate of inf trains to NaN
            raise HarnessError(f"{what} option {key} must be finite, got {value!r}")
        out[key] = value
    return out


def parse_sets(items, method_config_cls, recipe_cls, method_label: str = "method") -> tuple[dict, dict]:
    """`--set KEY=VALUE` items -> (method overrides, recipe overrides). KEY is `method.NAME`, `recipe.NAME`,
    or a bare NAME that exactly one of the two has; VALUE is read as YAML (true, 3, 1.0e-4, [a, b], null)."""
    method_keys = {f.name for f in dataclasses.fields(method_config_cls)}
    recipe_keys = {f.name for f in dataclasses.fields(recipe_cls)}
    method, recipe = {}, {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HarnessError(f"--set {item!r}: expected KEY=VALUE, e.g. --set method.double_layernorm=false")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise HarnessError(f"--set {item!r}: {text!r} is not a YAML value") from None
        section, _, name = key.rpartition(".")
        if section not in ("", "method", "recipe"):
            raise HarnessError(f"--set {item!r}: KEY is method.NAME, recipe.NAME or a bare NAME")
        if not section:
            owners = [s for s, keys in (("method", method_keys), ("recipe", recipe_keys)) if name in keys]
            if len(owners) != 1:
                raise HarnessError(f"--set {item!r}: {name} is " + ("both a method and a recipe option: write "
                                   f"method.{name} or recipe.{name}" if owners else
                                   f"neither a method option ({', '.join(sorted(method_keys)) or 'none'}) nor a "
                                   f"recipe option ({', '.join(sorted(recipe_keys))})"))
            section = owners[0]
        (method if section == "method" else recipe)[name] = value
    return check_values(method_config_cls, method, method_label), check_values(recipe_cls, recipe, "recipe")


def yaml_value(value) -> str:
    """A value as --set takes it: YAML that reads back as the same value (1e-05 alone is a string to PyYAML)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


MAX_TAG = 160  # leaves room for dataset, method, preset, --tag and seed within a 255-byte file name


def overrides_tag(method: dict, recipe: dict) -> str | None:
    """A run-id suffix naming the --set overrides, file-name safe, so that variants never share a run id: `key-value`
    parts joined by "_". Where that text loses something (characters a file name cannot hold are dropped: `[1, 1]`
    and `[11]` both read `11`) or could be read two ways (a value holding "_"), "@" and 8 hex digits of the exact
    overrides' hash follow; "@" is never part of the readable text, so no two override sets share a suffix."""
    parts = [f"{k}-{yaml_value(v)}" for section in (recipe, method) for k, v in sorted(section.items())]
    exact = "_".join(parts)
    readable = re.sub(r"[^A-Za-z0-9_.=+-]+", "", exact)
    if readable != exact or any("_" in yaml_value(v) for section in (recipe, method) for v in section.values()):
        readable += "@" + hashlib.sha256(json.dumps([recipe, method], sort_keys=True).encode()).hexdigest()[:8]
    if len(readable) > MAX_TAG:
        raise HarnessError(f"the --set overrides make a run-id suffix of {len(readable)} characters "
                           f"({readable[:40]}...), too long for a file name (at most {MAX_TAG}): put them in a "
                           "--config file and name the variant with --tag")
    return readable or None
