"""What the V-L fusion reads at step 0 under a side method (issue 28: why LST and UniPT stay on the tiny plateau):
the tiny model with the stand-in encoders, a method applied as a run applies it, one pass over val expressions
(eval transform), and per branch the frozen features against what the fusion is handed (`TransVG.join`: the side
output in place of the features for `join: replace`, added to them for `add`).

    python benchmarks/side_scale.py [--samples 256] [--out results/benchmarks/side_scale.json]

Per branch: `std` (over every valid token and channel), `token_std` (the std over a sample's valid tokens, per
channel, averaged: how much tokens differ from each other, which is what localising an object and reading a word
need) and `cosine` (the per-token cosine between what the fusion reads and the frozen features). Seconds on a CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fusion_plateau import stand_in
from harness.records import environment, git_state, now, write_json_atomic

# (label, method, method options): the methods whose side output joins the branch features, as released and with
# the other join
SETTINGS = (("m2ist (add, as released)", "m2ist", {}),
            ("lst (replace, as released)", "lst", {}),
            ("lst [join=add]", "lst", {"join": "add"}),
            ("unipt (replace, as released)", "unipt", {}),
            ("unipt [join=add]", "unipt", {"join": "add"}))


def stats(x: torch.Tensor, pad: torch.Tensor, frozen: torch.Tensor) -> dict:
    """x, frozen: [B, N, C] token features; pad: [B, N], True = padding."""
    valid = (~pad).unsqueeze(-1).to(x.dtype)
    count = valid.sum(1)
    mean = (x * valid).sum(1) / count
    token_std = (((x - mean.unsqueeze(1)) ** 2 * valid).sum(1) / (count - 1).clamp(min=1)).sqrt()
    keep = ~pad
    cosine = torch.nn.functional.cosine_similarity(x[keep], frozen[keep], dim=-1)
    return {"std": round(x[keep].std().item(), 4), "token_std": round(token_std.mean().item(), 4),
            "cosine": round(cosine.mean().item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="val expressions (the first ones)")
    parser.add_argument("--out", default="results/benchmarks/side_scale.json")
    args = parser.parse_args()

    from datasets.transforms import model_inputs
    from harness.engine import build_loader
    from harness.recipe import build_recipe
    from methods import apply_method, build_method

    make_model, split = stand_in()
    val = torch.utils.data.Subset(split("val"), range(args.samples))
    batch = model_inputs(next(iter(build_loader(val, args.samples, False, build_recipe("tiny", "unc"), 0, 1))),
                         torch.device("cpu"))
    results = []
    for label, name, options in SETTINGS:
        model = make_model(0)
        apply_method(build_method(name, options), model)
        model.eval()
        with torch.no_grad():
            vis, txt = model.encode(batch["image"], batch["image_mask"], batch["word_ids"], batch["word_mask"])
            v_side, t_side = model.side(vis, txt)
        row = {"setting": label, "method": name, "options": options}
        for branch, out, side in (("vision", vis, v_side), ("language", txt, t_side)):
            row[branch] = {"frozen": stats(out.features, out.mask, out.features),
                           "fusion_reads": stats(model.join(out.features, side), out.mask, out.features)}
        results.append(row)
        print(label, {b: (row[b]["frozen"]["token_std"], row[b]["fusion_reads"]) for b in ("vision", "language")},
              flush=True)
    write_json_atomic(Path(args.out), {
        "kind": "benchmark", "benchmark": "side_scale", "created_at": now(), "git": git_state(), "env": environment(),
        "what": __doc__.split("\n\n")[0], "samples": args.samples, "split": "val (synthetic unc, eval transform)",
        "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
