"""Whole tiny runs on a candidate for issue 28's new tiny problem beside today's: when each run leaves the plateau,
whether it converges, and the seed spread, per method.

    python benchmarks/toy_candidate.py [--toy candidate] [--methods frozen full] [--seeds 13 14 15] [--jobs 2]
    python benchmarks/toy_candidate.py --table-only [--toy candidate]

Toys (TOYS): `current` = the tiny problem as committed; `candidate` = the levers the fusion-alone probe
(benchmarks/fusion_levers.py) found: synthetic objects 1.5x larger (3-4 per scene instead of 3-5, so that they
still fit), TransVG's `normalize_before` fusion (pre-norm + final LayerNorm) and DETR's box-loss weights (L1 x5,
GIoU x2). Each toy's synthetic set lives in its own cache folder ($REC_BENCH_CACHE/toys/<toy>; the stand-in
encoders are shared, their source task does not depend on the REC scenes). Every run is `harness run` with the
tiny recipe (50 epochs), one torch thread, `--jobs` runs at a time; a finished run is skipped and an interrupted
one resumes (its checkpoints and logs are in runs/toy_candidate/). The summary (results/benchmarks/toy_candidate/<toy>.md)
is rebuilt from the records alone: the text-blind floor of the toy's val split, per run the first epoch whose val
Acc@0.5 reaches floor + 10 points ("exit", issue 28's plateau criterion) and whether the best val is within 1 point
of the mean val over the last 20% of epochs ("converged"), and per method the mean and sample std over seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path("results/benchmarks/toy_candidate")
TOYS = {
    "current": {"scale": 1.0, "objects": None, "normalize_before": False, "recipe": {}},
    "candidate": {"scale": 1.5, "objects": (3, 4), "normalize_before": True,
                  "recipe": {"l1_weight": 5.0, "giou_weight": 2.0}},
}


def toy_cache(toy: str) -> Path:
    from fusion_levers import scene_cache

    return scene_cache(toy, folder="toys")


def apply_toy(toy: str) -> None:
    """Patch this process's generator and tiny preset to the toy (the levers are not defaults yet)."""
    import datasets.synth_scenes as scenes
    from harness.model import config

    t = TOYS[toy]
    scenes.SIDES = {k: (round(a * t["scale"]), round(b * t["scale"])) for k, (a, b) in scenes.SIDES.items()}
    scenes.OBJECTS = t["objects"] or scenes.OBJECTS
    tiny = config.PRESETS["tiny"]
    config.PRESETS["tiny"] = replace(tiny, fusion=replace(tiny.fusion, normalize_before=t["normalize_before"]))


def run_one(toy: str, method: str, seed: int) -> int:
    """One run in a child process on one thread; the toy's synthetic set is made by the first run that needs it
    (race-safe: datasets.synth.ensure_synthetic), the stand-in encoders are those of the default cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REC_BENCH_CACHE": str(toy_cache(toy))}
    sets = [a for k, v in TOYS[toy]["recipe"].items() for a in ("--set", f"recipe.{k}={v}")]
    argv = [sys.executable, str(HERE / "toy_candidate.py"), "--child", toy, "run", "--method", method, "--dataset",
            "unc", "--preset", "tiny", "--device", "cpu", "--seed", str(seed), "--tag", f"seed{seed}", *sets,
            "--output", str(OUT / toy / "runs"), "--work-dir", f"runs/toy_candidate/{toy}", "--skip-done"]
    log = Path("runs/toy_candidate") / toy / "logs" / f"{method}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.call(argv, env=env, stdout=f, stderr=subprocess.STDOUT)


def floor(toy: str) -> float:
    """The best text-blind rule's val Acc@0.5 (%) on the toy's synthetic unc."""
    from datasets.baseline import text_blind_baselines
    from datasets.catalog import resolve_paths
    from harness.run import synthetic_root

    apply_toy(toy)
    root = synthetic_root(toy_cache(toy))
    val = text_blind_baselines(resolve_paths(root), "unc")["val"]
    return 100 * max(v for k, v in val.items() if k in ("largest", "central", "random"))


def summary(toy: str) -> str:
    from harness.records import read_record

    floor_val = floor(toy)
    rows, per_method = [], {}
    for path in sorted((OUT / toy / "runs").glob("*.json")):
        r = read_record(path)
        if r["status"] != "ok":
            continue
        val = [100 * h["val_accuracy"] for h in r["train"]["history"]]
        tail = val[-max(1, len(val) // 5):]
        exit_epoch = next((i + 1 for i, v in enumerate(val) if v >= floor_val + 10), None)
        best, last = max(val), statistics.fmean(tail)
        res = {s: 100 * r["results"][s]["accuracy"] for s in ("val", "testA", "testB")}
        hours = r["time"].get("train_seconds", 0) / 3600
        per_method.setdefault(r["method"], []).append((exit_epoch, best, last, res))
        rows.append(f"| {r['method']} | {r['recipe']['seed']} | {exit_epoch or 'never'} / {len(val)} | {best:.1f} | "
                    f"{last:.1f} | {'yes' if best - last <= 1 else 'no'} | {res['val']:.1f} | {res['testA']:.1f} | "
                    f"{res['testB']:.1f} | {hours:.2f} | {r['env']['git']['commit'][:12]}"
                    f"{' (dirty)' if r['env']['git']['dirty'] else ''} |")
    spread = []
    for method, runs in per_method.items():
        cells = []
        for split in ("val", "testA", "testB"):
            values = [res[split] for *_, res in runs]
            cells.append(f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1
                         else f"{values[0]:.1f}")
        exits = [e for e, *_ in runs]
        spread.append(f"| {method} | {len(runs)} | {', '.join(str(e or 'never') for e in exits)} | " + " | ".join(cells)
                      + " |")
    t = TOYS[toy]
    return "\n".join([
        f"# Toy `{toy}`: plateau exit, convergence and seed spread of whole tiny runs",
        "",
        f"Toy: objects x{t['scale']}, {t['objects'] or 'default'} per scene, fusion normalize_before "
        f"{t['normalize_before']}, recipe overrides {t['recipe'] or 'none'}; tiny recipe otherwise (50 epochs, lr drop "
        f"at 40). Text-blind floor (val, best rule): {floor_val:.1f}; exit = first epoch with val >= floor + 10 = "
        f"{floor_val + 10:.1f}; converged = best val within 1 point of the mean val over the last 20% of epochs.",
        "Regenerate: `python benchmarks/toy_candidate.py --table-only --toy " + toy + "` (runs: without --table-only).",
        "",
        "| method | seed | exit epoch / epochs | best val | last-20% mean val | converged | val | testA | testB | "
        "train hours | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| method | seeds | exit epochs | val (mean ± std) | testA | testB |",
        "|---|---|---|---|---|---|",
        *spread,
        "",
    ])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # a run on a toy, in this process
        import torch

        torch.set_num_threads(1)
        apply_toy(sys.argv[2])
        from harness.cli import main as harness_main

        sys.exit(harness_main(sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", default="candidate", choices=TOYS)
    parser.add_argument("--methods", nargs="*", default=["frozen", "full"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[13, 14, 15])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda ms: run_one(args.toy, *ms),
                                  [(m, s) for s in args.seeds for m in args.methods]))
        if any(codes):
            failed = sum(1 for c in codes if c)
            print(f"{failed} run(s) failed: see runs/toy_candidate/{args.toy}/logs", file=sys.stderr)
    from harness.records import write_text_atomic

    print(f"wrote {write_text_atomic(OUT / (args.toy + '.md'), summary(args.toy))}")


if __name__ == "__main__":
    main()
