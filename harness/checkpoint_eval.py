"""`harness eval`: a checkpoint scored on a dataset's eval splits. Reads the checkpoints `harness run` writes
(best.pth, last.pth: weights plus the model and method description) and TransVG's released ones (full
fine-tuning in TransVG's key layout)."""
from __future__ import annotations

import torch

from datasets.catalog import get_spec
from datasets.rec import RECDataset
from datasets.tokenize import build_tokenizer
from harness.device import resolve_device
from harness.engine import build_loader, prepare_runtime
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.model.weights import load_whole_model_state, read_checkpoint
from harness.recipe import Recipe
from harness.run import RunConfig, resolve_data
from methods import apply_method, build_method


def load_checkpoint_for_eval(path, trust: bool = False):
    """(model, meta) from a checkpoint this project wrote (last.pth or best.pth), or from TransVG's own
    checkpoint layout (a TransVG model = full fine-tuning; its meta names no tokenizer)."""
    from harness.model import PRESETS, build_model
    from harness.model.config import config_from_dict
    from harness.model.transvg import TransVG
    from harness.model.weights import is_transvg_state, transvg_shapes

    ckpt = read_checkpoint(path, trust)
    sd = ckpt.get("model") if isinstance(ckpt, dict) else None
    if isinstance(sd, dict):
        odd = next(((k, v) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if odd is not None:
            raise HarnessError(f"{path}: its 'model' entry maps {odd[0]!r} to a {type(odd[1]).__name__}; a state dict "
                               "maps parameter names to tensors: the file is damaged, get it again")
    if isinstance(sd, dict) and "meta" not in ckpt and is_transvg_state(sd):
        try:
            shapes = transvg_shapes(sd)
        except (KeyError, IndexError, ValueError) as err:
            raise HarnessError(f"{path}: a TransVG checkpoint without the shapes of a TransVG model "
                               f"({type(err).__name__}: {err}): the file is damaged, get it again") from None
        preset = next((name for name, c in PRESETS.items()
                       if (c.fusion.d_model, c.vision.d_model, c.language.hidden)
                       == (shapes["fusion"], shapes["vision"], shapes["language"])), None)
        if preset is None:
            raise HarnessError(f"{path}: a TransVG checkpoint of widths {shapes} matches no preset "
                               f"({', '.join(PRESETS)})")
        max_query_len = shapes["positions"] - 1 - PRESETS[preset].visual_tokens
        if max_query_len < 1:
            raise HarnessError(f"{path}: vl_pos_embed has {shapes['positions']} positions, fewer than [REG] + one "
                               f"word + {PRESETS[preset].visual_tokens} visual tokens: the file is damaged, get it "
                               "again")
        model = build_model(preset, max_query_len=max_query_len, vocab_size=shapes["vocab_size"])
        report = load_whole_model_state(model, sd, str(path))
        print(report.summary())
        apply_method(build_method("full"), model)
        meta = {"method": "full", "method_config": {}, "model_config": model.config.to_dict(), "preset": preset,
                "tokenizer": None, "data": "real", "data_desc": {}, "source": "TransVG checkpoint"}
        return model, meta
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "model" not in ckpt:
        raise HarnessError(f"{path} is neither a checkpoint written by `harness run` (no 'meta'/'model' entries) "
                           "nor a TransVG checkpoint ({'model': visumodel.*, textmodel.bert.*, ...})")
    meta = ckpt["meta"]
    try:
        config = config_from_dict(meta["model_config"])
        with torch.device("meta"):  # what the description asks for, before anything is allocated
            asked = sum(p.numel() for p in TransVG(config).parameters())
        # what the file really holds: its storages' bytes (a stride-0 tensor claims many elements over a few bytes)
        held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ckpt["model"].values()
                    }.values()) // 4
        if asked > 2 * held + 10_000_000:  # methods add modules, but never a multiple of the model
            raise ValueError(f"it asks for a model of {asked:,} parameters while the file holds {held:,} values")
        model = TransVG(config)
        apply_method(build_method(meta["method"], meta["method_config"]), model)
        for key in ("tokenizer", "data", "data_desc"):
            meta[key]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise HarnessError(f"{path}: its model description is damaged ({type(err).__name__}: {err}); use a "
                           "checkpoint `harness run` wrote") from None
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise HarnessError(f"{path}: its weights do not fit its model description "
                           f"({(str(err).strip().splitlines() or [''])[0][:120]})") from None
    if missing or unexpected:
        raise HarnessError(f"{path} does not match its own model description: {len(missing)} missing, "
                           f"{len(unexpected)} unexpected keys")
    return model, meta


def evaluate_checkpoint(path, dataset: str, data_root=None, split_root=None, image_root=None, device="auto",
                        batch_size: int = 64, splits=None, cache_dir=None, synthetic_images=None, tokenizer=None,
                        trust_pickles: bool = False) -> dict:
    """Scores on `dataset`; without a data root, on the synthetic set the checkpoint was trained with.
    `tokenizer` (HF id, folder or vocab.txt) replaces the checkpoint's; a TransVG checkpoint needs it."""
    model, meta = load_checkpoint_for_eval(path, trust_pickles)
    device = resolve_device(device)
    spec = get_spec(dataset)
    tokenizer = tokenizer or meta["tokenizer"]
    if tokenizer is None:
        raise HarnessError(f"{path} is a TransVG checkpoint, which carries no tokenizer: pass --tokenizer (an HF id "
                           "such as bert-base-uncased in the local cache, a BERT folder or a vocab.txt)")
    if data_root is None and meta["data"] == "synthetic" and meta["data_desc"].get("root"):
        data_root = meta["data_desc"]["root"]  # a synthetic set given as --data-root
    if synthetic_images is None and meta["data"] == "synthetic":
        synthetic_images = meta["data_desc"].get("images")
    cfg = RunConfig(method=meta["method"], dataset=dataset, data_root=data_root, split_root=split_root,
                    image_root=image_root, tokenizer=tokenizer if data_root else None, cache_dir=cache_dir,
                    synthetic_images=synthetic_images, trust_pickles=trust_pickles)
    paths, tok_source, _, _ = resolve_data(cfg, 0)
    tokenizer = build_tokenizer(tok_source)
    if len(tokenizer) != model.config.language.vocab_size:
        raise HarnessError(f"the tokenizer {tok_source} has {len(tokenizer)} entries but the checkpoint's model "
                           f"was trained with {model.config.language.vocab_size}: pass the same tokenizer")
    recipe = Recipe(num_workers=0)
    prepare_runtime(model, recipe, device)
    model.to(device)
    out = {}
    for split in splits or spec.eval_splits:
        ds = RECDataset(paths, dataset, split, tokenizer, model.config.image_size, train=False,
                        max_query_len=model.config.max_query_len)
        out[split] = evaluate(model, build_loader(ds, batch_size, False, recipe, 0, 1), device)
    return out
