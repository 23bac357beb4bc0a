"""Pretrained weights into the shared model, with strict key accounting.

- vision: DETR / TransVG `detr-r50-*.pth` (a dict whose "model" entry uses DETR's names, see
  shared/reference/checkpoints.md sections 1-2): backbone.0.body.* -> visumodel.backbone.*, input_proj.*,
  transformer.encoder.* -> visumodel.encoder.*; the decoder and detection heads are reported as ignored.
- language: a Hugging Face BERT (hub id from the local cache, or a folder with config.json and
  model.safetensors / pytorch_model.bin); transformers handles `bert.` prefixes and gamma/beta names.
Every key the branch has must be found with the right shape, or loading stops with a message saying so.
Weights load into the bare model, before a method adds or wraps modules.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.errors import HarnessError

# DETR parts that a REC vision encoder does not use (TransVG builds DETR with 0 decoder layers).
DETR_UNUSED = ("transformer.decoder.", "query_embed.", "class_embed.", "bbox_embed.", "backbone.1.")
DETR_TO_MODEL = (("backbone.0.body.", "visumodel.backbone."), ("input_proj.", "visumodel.input_proj."),
                 ("transformer.encoder.", "visumodel.encoder."))


@dataclass
class LoadReport:
    what: str
    source: str
    loaded: int = 0
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    ignored: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.what} weights from {self.source}: {self.loaded} keys loaded, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.ignored)} ignored (unused by this model)")


def read_checkpoint(path) -> dict:
    """torch.load a trusted checkpoint: weights_only first; TransVG/DETR files also pickle an argparse
    Namespace under "args", which only the full unpickler reads."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} not found: pass an existing file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights_only" not in str(err):
                raise
            print(f"note: {path} holds non-tensor objects (e.g. argparse args); loading it as a trusted file")
            return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise HarnessError(f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120]})") from None


def _state_dict_of(ckpt, path) -> dict:
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise HarnessError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_vision_weights(model, path) -> LoadReport:
    return load_vision_state(model, _state_dict_of(read_checkpoint(path), path), str(path))


def load_vision_state(model, sd: dict, source: str = "state dict") -> LoadReport:
    report = LoadReport("vision", source)
    target = {k: v for k, v in model.state_dict().items() if k.startswith("visumodel.")}
    mapped = {}
    for key, value in sd.items():
        new = next((dst + key[len(src):] for src, dst in DETR_TO_MODEL if key.startswith(src)), None)
        if new is None:
            (report.ignored if key.startswith(DETR_UNUSED) else report.unexpected).append(key)
        elif key.endswith("num_batches_tracked"):
            report.ignored.append(key)  # FrozenBatchNorm2d keeps no such buffer (as DETR's)
        else:
            mapped[new] = value
    _check_and_load(model, target, mapped, report, "a DETR-R50 / TransVG detr-r50-*.pth file "
                    "(key 'model' with backbone.0.body.*, input_proj.*, transformer.encoder.*)")
    return report


def load_language_weights(model, source) -> LoadReport:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our LoadReport replaces HF's own load table
    hf_logging.disable_progress_bar()
    report = LoadReport("language", str(source))
    local = Path(source).exists()
    try:
        bert, info = BertModel.from_pretrained(str(source), add_pooling_layer=False, output_loading_info=True,
                                               local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as err:
        hint = ("a folder with config.json and model.safetensors or pytorch_model.bin" if local else
                "a local folder (config.json + weights), or an id already in the Hugging Face cache")
        raise HarnessError(f"cannot load BERT weights from '{source}': {str(err).splitlines()[0][:160]}; "
                           f"expected {hint}") from None
    ours = model.textmodel.bert.config
    for attr in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if getattr(bert.config, attr) != getattr(ours, attr):
            raise HarnessError(f"BERT at '{source}' has {attr}={getattr(bert.config, attr)} but the model "
                               f"expects {getattr(ours, attr)}: use the matching preset / tokenizer")
    report.ignored = [k for k in info.get("unexpected_keys", [])]
    missing = [k for k in info.get("missing_keys", [])]
    if missing:
        raise HarnessError(f"BERT at '{source}' lacks {len(missing)} weights (e.g. {missing[:3]}): "
                           "the file does not hold a BERT encoder")
    target = {k: v for k, v in model.state_dict().items() if k.startswith("textmodel.bert.")}
    mapped = {"textmodel.bert." + k: v for k, v in bert.state_dict().items()}
    _check_and_load(model, target, mapped, report, "a BERT checkpoint of the same size")
    return report


def _check_and_load(model, target: dict, mapped: dict, report: LoadReport, expected: str):
    report.missing = sorted(set(target) - set(mapped))
    report.unexpected += sorted(set(mapped) - set(target))
    bad_shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}"
                  for k in set(target) & set(mapped) if mapped[k].shape != target[k].shape]
    if report.missing or report.unexpected or bad_shapes:
        problems = []
        if report.missing:
            problems.append(f"{len(report.missing)} missing (e.g. {report.missing[0]})")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[0]})")
        if bad_shapes:
            problems.append(f"{len(bad_shapes)} with other shapes (e.g. {bad_shapes[0]}): wrong preset?")
        raise HarnessError(f"{report.source} does not match the {report.what} branch: {'; '.join(problems)}; "
                           f"expected {expected}")
    model.load_state_dict(mapped, strict=False)
    report.loaded = len(mapped)
