"""The device-independent training-memory proxy and the FLOPs at the paper preset, on CPU, for every method, with
and without activation checkpointing of the V-L fusion (recipe `checkpoint_fusion`), scaled to the paper's batch 64.

    python benchmarks/memory_proxy.py [--methods NAME ...] [--out results/benchmarks/memory_proxy]

Each configuration is profiled (`harness.profile.profile`, one real AdamW step on synthetic tensors at 640 px, the
proxy = bytes autograd saves for backward + parameters and buffers + gradients + AdamW state) at batch 1, 2 and 4.
The saved activations are fitted as a + b x batch on batch 1 and 2; batch 4 checks that the fit is linear; the
fit then gives batch 64. The batch-1 profile without checkpointing also counts the FLOPs (fvcore forward, and
torch.utils.flop_counter's training step). The records go to OUT/records/, the table to OUT.md (rebuilt from the
records alone when run with --table-only). Resumable: a record that exists with the same configuration is kept.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.records import read_record, write_text_atomic
from methods import method_names

BATCHES = (1, 2, 4)
TARGET_BATCH = 64


def profile_all(records: Path, methods) -> None:
    from harness.profile import profile

    for method in methods:
        for checkpointing in (False, True):
            for batch in BATCHES:
                overrides = {"checkpoint_fusion": True} if checkpointing else {}
                rec = profile(method, preset="paper", batch_size=batch, device="cpu", steps=1, warmup=0,
                              flops=batch == 1 and not checkpointing, recipe_overrides=overrides, output=records,
                              tag="checkpoint_fusion" if checkpointing else None, skip_done=True)
                print(f"{rec['run_id']}: saved activations {rec['memory']['saved_activations_bytes'] / 2**20:,.0f} MiB")


def table(records: Path, methods) -> str:
    rows, commits = [], set()
    full_total = {}
    for checkpointing in (False, True):
        for method in methods:
            recs = {}
            for batch in BATCHES:
                name = f"{method}_paper_cpu_fp32_b{batch}" + ("_checkpoint_fusion" if checkpointing else "")
                recs[batch] = read_record(records / f"{name}.json")
                commits.add(f"{recs[batch]['env']['git']['commit'][:12]}"
                            + (" (dirty)" if recs[batch]["env"]["git"]["dirty"] else ""))
            act = {b: r["memory"]["saved_activations_bytes"] for b, r in recs.items()}
            slope = act[2] - act[1]
            intercept = act[1] - slope
            predicted4 = intercept + 4 * slope
            m = recs[1]["memory"]
            fixed = m["model_bytes"] + m["grad_bytes"] + m["optimizer_state_bytes"]
            total = fixed + intercept + TARGET_BATCH * slope
            if method == "full":
                full_total[checkpointing] = total
            flops = recs[1].get("flops") or {}
            rows.append((method, checkpointing, slope, predicted4, act[4], fixed, total, flops))
    gib = 2**30
    lines = [
        "# Training-memory proxy and FLOPs at the paper preset, every method, fusion checkpointing off/on",
        "",
        "Device-independent proxy (CPU): bytes autograd saves for backward in one training step (saved_tensors_hooks, "
        "deduplicated by storage, parameters excluded) + parameters and buffers + gradients + AdamW state; fp32, "
        "optimized runtime, 640 px, query length 20. Measured at batch 1, 2, 4 on synthetic tensors (one real AdamW "
        "step each); activations fitted as a + b x batch on batch 1 and 2, checked at batch 4, then evaluated at "
        f"batch {TARGET_BATCH}. Not an allocator peak: GPU peaks add workspace, fragmentation and the transient "
        "tensors of backward (with checkpointing, one fusion layer's recomputed activations). FLOPs at batch 1 "
        "(checkpointing off): fvcore on the forward pass with eager attention, in GMACs (one multiply-add = one "
        "fvcore flop), and torch.utils.flop_counter on one training step (forward + backward, 1 multiply-add = 2 "
        "FLOPs). Rows keep `harness methods`' order.",
        "",
        f"- commit(s): {', '.join(sorted(commits))}",
        "- regenerate: `python benchmarks/memory_proxy.py` (records in results/benchmarks/memory_proxy/records/)",
        "",
        "| method | fusion checkpointing | activations per sample (MiB) | batch 4: fit / measured (MiB) | "
        f"params + grads + AdamW (GiB) | proxy at batch {TARGET_BATCH} (GiB) | % of full (same setting) | "
        "% of full without checkpointing | fwd GMACs (b=1) | train-step GFLOPs (b=1) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, checkpointing, slope, predicted4, measured4, fixed, total, flops in rows:
        counted = (f"{flops['forward']['gmacs']:.2f} | {flops['train_step']['flops'] / 1e9:.1f}"
                   if flops.get("forward") else " | ")
        lines.append(f"| {method} | {'on' if checkpointing else 'off'} | {slope / 2**20:,.1f} | "
                     f"{predicted4 / 2**20:,.0f} / {measured4 / 2**20:,.0f} | {fixed / gib:.2f} | {total / gib:.2f} | "
                     f"{100 * total / full_total[checkpointing]:.1f} | {100 * total / full_total[False]:.1f} | "
                     f"{counted} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", help="methods to profile (default: every registered one)")
    parser.add_argument("--out", default="results/benchmarks/memory_proxy")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the records")
    args = parser.parse_args()
    out = Path(args.out)
    methods = args.methods or ["full", *[m for m in method_names() if m != "full"]]
    if not args.table_only:
        profile_all(out / "records", methods)
    path = write_text_atomic(out.with_suffix(".md"), table(out / "records", methods))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
