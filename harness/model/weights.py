"""Pretrained weights into the shared model, with strict key accounting.

- vision: DETR / TransVG `detr-r50-*.pth` (a dict whose "model" entry uses DETR's names, see
  shared/reference/checkpoints.md sections 1-2): backbone.0.body.* -> visumodel.backbone.*, input_proj.*,
  transformer.encoder.* -> visumodel.encoder.*; the decoder and detection heads are reported as ignored.
- language: a Hugging Face BERT (hub id from the local cache, or a folder with config.json and
  model.safetensors / pytorch_model.bin); transformers handles `bert.` prefixes and gamma/beta names.
- whole model: TransVG's own checkpoints (djiajunustc/TransVG @c862427 train.py saves {'model': state_dict,
  'optimizer', 'lr_scheduler', 'epoch', 'args', 'val_accu'}; 622 keys, shared/reference/checkpoints.md section 3):
  visumodel.backbone.0.body.* / visumodel.transformer.encoder.* / vl_transformer.encoder.* are renamed, BERT
  (pytorch_pretrained_bert names = HF names; gamma/beta accepted) and the fusion keys map one to one, BERT's
  pooler is ignored (TransVG never reads it). Or a checkpoint of this project whose model has no method
  modules (full, frozen).
Every key the branch has must be found with the right shape, or loading stops with a message saying so.
Weights load into the bare model, before a method adds or wraps modules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datasets.safe_load import UnsafeFileError, torch_load
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


def _renamed(key: str, table) -> str | None:
    """`key` with the first matching (source prefix, model prefix) of `table` swapped in; None if none matches."""
    return next((dst + key[len(src):] for src, dst in table if key.startswith(src)), None)


def read_checkpoint(path, trust: bool = False):
    """torch.load a checkpoint or weight file safely (datasets/safe_load.py): DETR's and TransVG's files pickle an
    argparse Namespace under "args", which the allow-list admits; anything else needs `trust`."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"checkpoint {path} is a folder: pass the .pth file")
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} not found: pass an existing file")
    try:
        return torch_load(path, trust, what="checkpoint")
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated, empty, random bytes, another format: unpickling fails in many ways
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise HarnessError(f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}"
                           f"{': ' + first if first else ''}); download or write it again") from None


def state_dict_of(ckpt, path) -> dict:
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise HarnessError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_vision_weights(model, path, trust: bool = False) -> LoadReport:
    return load_vision_state(model, state_dict_of(read_checkpoint(path, trust), path), str(path))


def load_vision_state(model, sd: dict, source: str = "state dict") -> LoadReport:
    report = LoadReport("vision", source)
    target = {k: v for k, v in model.state_dict().items() if k.startswith("visumodel.")}
    mapped = {}
    for key, value in sd.items():
        new = _renamed(key, DETR_TO_MODEL)
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
    text = str(source)
    if not local and (text.startswith(("/", ".", "~")) or text.endswith("/") or text.count("/") >= 2):
        raise HarnessError(f"BERT folder {source} not found: pass a folder with config.json and model.safetensors "
                           "or pytorch_model.bin, or a Hugging Face id in the local cache")
    if local and Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise HarnessError(f"BERT folder {source} has no config.json: without it transformers would assume "
                           "bert-base sizes; copy the model's config.json next to its weights")
    try:
        bert, info = BertModel.from_pretrained(str(source), add_pooling_layer=False, output_loading_info=True,
                                               local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as err:  # missing files, corrupt safetensors, shapes that do not fit the config, ...
        hint = ("a folder with config.json and model.safetensors or pytorch_model.bin" if local else
                "a local folder (config.json + weights), or an id already in the Hugging Face cache")
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise HarnessError(f"cannot load BERT weights from '{source}': {first}; expected {hint}") from None
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


# TransVG checkpoint key -> ours (models/trans_vg.py, visual_model/detr.py, vl_transformer.py at c862427)
TRANSVG_TO_MODEL = (("visumodel.backbone.0.body.", "visumodel.backbone."),
                    ("visumodel.input_proj.", "visumodel.input_proj."),
                    ("visumodel.transformer.encoder.", "visumodel.encoder."), ("textmodel.bert.", "textmodel.bert."),
                    ("vl_transformer.encoder.", "vl_transformer."), ("vl_pos_embed.", "vl_pos_embed."),
                    ("reg_token.", "reg_token."), ("visu_proj.", "visu_proj."), ("text_proj.", "text_proj."),
                    ("bbox_embed.", "bbox_embed."))
# keys a TransVG checkpoint may hold that this model does not use, with the reason
TRANSVG_IGNORED = {"textmodel.bert.pooler.": "BERT's pooler (TransVG reads the last hidden layer only)",
                   "textmodel.bert.embeddings.position_ids": "a constant buffer (0, 1, 2, ...)"}


def is_transvg_state(sd: dict) -> bool:
    return any(k.startswith(("visumodel.backbone.0.body.", "visumodel.transformer.")) for k in sd)


def transvg_shapes(sd: dict) -> dict:
    """What a TransVG state dict says about the model it fits: widths, query length, vocabulary."""
    try:
        return {"fusion": sd["vl_pos_embed.weight"].shape[1], "vision": sd["visu_proj.weight"].shape[1],
                "language": sd["text_proj.weight"].shape[1], "positions": sd["vl_pos_embed.weight"].shape[0],
                "vocab_size": sd["textmodel.bert.embeddings.word_embeddings.weight"].shape[0]}
    except KeyError as err:
        raise HarnessError(f"the TransVG checkpoint lacks {err.args[0]}: not a whole TransVG model") from None


def load_whole_model_state(model, sd: dict, source: str) -> LoadReport:
    """A TransVG checkpoint (or one of this project's, of a model without method modules) into the bare model:
    every key of the model must be found with its shape; unused TransVG keys are reported as ignored."""
    report = LoadReport("whole-model", source)
    if not is_transvg_state(sd):
        _check_and_load(model, model.state_dict(), sd, report, "a TransVG checkpoint or a `harness run` checkpoint "
                        "of a method without inserted modules (full, frozen)")
        return report
    mapped = {}
    for key, value in sd.items():
        if key.startswith(tuple(TRANSVG_IGNORED)) or key.endswith("num_batches_tracked"):
            report.ignored.append(key)  # FrozenBatchNorm2d keeps no num_batches_tracked (as TransVG's)
            continue
        new = _renamed(key, TRANSVG_TO_MODEL)
        if new is None:
            report.unexpected.append(key)
            continue
        if new.startswith("textmodel.") and new.endswith((".gamma", ".beta")):  # old BERT dumps name LayerNorms so
            new = new[: new.rindex(".")] + (".weight" if new.endswith(".gamma") else ".bias")
        mapped[new] = value
    _check_and_load(model, model.state_dict(), mapped, report,
                    "TransVG's checkpoint layout (visumodel.*, textmodel.bert.*, vl_transformer.encoder.*, "
                    "vl_pos_embed, reg_token, visu_proj, text_proj, bbox_embed) at this preset's sizes")
    return report
