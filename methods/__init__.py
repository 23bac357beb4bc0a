"""Method registry: one small module per method, each registering a `Method` subclass by name, with its
defaults in `<name>.yaml` beside it (`method:` = the method's hyper-parameters, `recipe:` = overrides of
the training recipe, each with a comment saying where it comes from)."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import yaml

from harness.errors import HarnessError
from harness.options import check_values
from methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}
_HERE = Path(__file__).parent


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def _discover():
    for info in pkgutil.iter_modules([str(_HERE)]):
        if info.name != "base":
            importlib.import_module(f"methods.{info.name}")


def method_names() -> list[str]:
    _discover()  # importing is cached, so this is cheap after the first call
    return sorted(_REGISTRY)


def method_defaults(name: str) -> dict:
    """The method's YAML as a dict with `method` and `recipe` sections (both may be empty)."""
    path = _HERE / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    data = data or {}
    return {"method": data.get("method") or {}, "recipe": data.get("recipe") or {}}


def method_class(name: str) -> type[Method]:
    if name not in method_names():
        raise HarnessError(f"unknown method '{name}': choose one of {', '.join(method_names())}")
    return _REGISTRY[name]


def build_method(name: str, overrides: dict | None = None) -> Method:
    cls = method_class(name)
    if overrides is not None and not isinstance(overrides, dict):
        raise HarnessError(f"a method section must be a mapping of option: value, got {overrides!r}")
    values = check_values(cls.Config, {**method_defaults(name)["method"], **(overrides or {})}, f"method '{name}'")
    try:
        return cls(cls.Config(**values))
    except (TypeError, ValueError) as err:
        raise HarnessError(f"bad option for method '{name}': {err}") from None


def apply_method(method: Method, model) -> None:
    """Apply a method to a built (and weight-loaded) model and check its promise about autograd."""
    method.apply(model)
    model.encoders_need_grad = method.encoders_need_grad
    if not method.encoders_need_grad:
        from harness.model import component_of

        leaking = [n for n, p in model.named_parameters()
                   if p.requires_grad and component_of(n) in ("vision", "language")]
        if leaking:
            raise HarnessError(f"method '{method.name}' runs the encoders without autograd but leaves "
                               f"{leaking[0]} (and {len(leaking) - 1} more) trainable inside them")


def describe_methods(preset: str = "paper") -> str:
    """One line per method with its tunable parameters at `preset` (counted on a meta-device model)."""
    import torch
    from tabulate import tabulate

    from harness.model import build_model, count_parameters

    rows = []
    for name in method_names():
        method = build_method(name)
        with torch.device("meta"):
            model = build_model(preset)
            apply_method(method, model)
        c = count_parameters(model)
        rows.append([name, f"{c['encoder_side_trainable']:,}", f"{c['percent_encoder_side']:.2f}",
                     f"{c['trainable']:,}", f"{c['total']:,}", method.summary])
    headers = ["method", "tunable (encoder-side)", "% of total", "all trainable", "total", "what it is"]
    note = (f"preset {preset}; tunable = trainable parameters inside or beside the encoders (REC PETL papers' "
            "'tunable backbone parameters'); all trainable adds the V-L fusion and box head; % = tunable / total")
    return tabulate(rows, headers=headers, disable_numparse=True) + "\n" + note
