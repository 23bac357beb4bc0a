"""`harness table`: the paper-style tables and the trade-off plot, built only from records.

- results/main.md: Acc@0.5 (%) per method and split, with tunable parameters; one table per (data, preset).
- results/efficiency.md: parameters, FLOPs, peak training memory, step/epoch time per method; one table per
  (preset, device, precision, batch), since "% of full" only means something within such a group. Profile
  records are preferred; figures inside run records fill in the rest, and a column says which.
- results/tradeoff.png: accuracy vs peak memory, bubble size = tunable parameters (as Fig. 1 of M2IST).
- results/curves.png: val Acc@0.5 per epoch of every method on the RefCOCO-style set, one line per method.

A missing record is an empty cell, never a guess; a malformed record stops with one line naming its file.
Every file starts with its provenance, built from the records it used.
"""
from __future__ import annotations

import functools
import html
import re
import statistics
from pathlib import Path

import pandas as pd

from datasets.catalog import get_spec
from harness.errors import HarnessError
from harness.palette import method_colour
from harness.records import read_record, write_text_atomic
from harness.stats import holds, paired_difference

# Main-table columns: (dataset, split, split label); RefCOCOg google's val-g only when a record has it.
MAIN_SPLITS = [("unc", "val", "val"), ("unc", "testA", "testA"), ("unc", "testB", "testB"),
               ("unc+", "val", "val"), ("unc+", "testA", "testA"), ("unc+", "testB", "testB"),
               ("gref_umd", "val", "val-u"), ("gref_umd", "test", "test-u"),
               ("referit", "val", "val"), ("referit", "test", "test"), ("gref", "val", "val-g")]
OPTIONAL = {("gref", "val")}
COUNTING = ("tunable = encoder-side trainable parameters (inside or beside the vision/language encoders: what "
            "REC PETL papers call tunable backbone parameters); all trainable adds the V-L fusion and box head; "
            "% = tunable / total parameters")
FLOPS_RULE = ("forward FLOPs: fvcore on one forward pass at batch 1 with eager attention; fvcore counts one "
              "multiply-add as one flop, so its figure is GMACs, and GFLOPs = 2 x GMACs; training-step TFLOPs: "
              "torch.utils.flop_counter (forward + backward at the training batch, optimizer excluded, "
              "1 multiply-add = 2 FLOPs)")


# ---- reading ---------------------------------------------------------------------------------------
def read_folder(folder) -> list[dict]:
    """Every record in a folder (none if the folder does not exist); a bad file raises HarnessError."""
    folder = Path(folder)
    return [read_record(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


FLOOR = "text-blind"  # rows of `harness data baseline` records: no model, the floor a method must clear
SELECTED_SUFFIX = " (selected on val)"  # the rows of `harness table --selected`
GRID_TAG = re.compile(r" \[(\w+)-(\d[\d.e+-]*)\]$")  # a `--set key=value` run's row: "lora [lr_encoder-1.0e-05]"
LINE_STYLES = ("-", "--", ":", "-.")  # curves: a method's rows in order (published first, then selected or grid)


def _base(name: str) -> str:
    """The method of a row: "m2ist [side_terms-false]" and "lora (selected on val)" -> their method's row name."""
    return name.split(" [")[0].removesuffix(SELECTED_SUFFIX)


def method_order(name: str):
    """full, frozen, the other methods alphabetically, m2ist, then the text-blind floor rows; a variant or the
    configuration selected on val follows its method, the points of a grid in numeric order."""
    base = _base(name)
    grid = GRID_TAG.search(name)
    tag = (grid.group(1), float(grid.group(2))) if grid else ("", 0.0)
    return (4 if base.startswith(FLOOR) else {"full": 0, "frozen": 1, "m2ist": 3}.get(base, 2), base,
            name != base, *tag, name)


SEED_TAG = re.compile(r"^seed\d+$")


def row_name(r: dict) -> str:
    """The method, plus the run's tag when it has one (`harness run --tag`: variants such as M2IST's forms), without
    the seed: the runs of one configuration with different seeds share a row."""
    if "row" in r:  # set by selected_runs
        return r["row"]
    prefix = "_".join((r["dataset"].replace("+", "plus"), r["method"], r["preset"]))
    tag = r["run_id"][len(prefix):].strip("_") if r["run_id"].startswith(prefix) else ""
    tag = "_".join(t for t in tag.split("_") if t and not SEED_TAG.match(t))
    return f"{r['method']} [{tag}]" if tag and r["kind"] == "run" else r["method"]


def _seed(r: dict):
    return r["recipe"].get("seed") if r["kind"] == "run" else None


def _cell(values: list[float]) -> str:
    """One value, or mean +- sample std (n) over seeds."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def cell_mean(cell: str) -> float:
    return float(cell.split(" ")[0])


def _precision(r: dict) -> str:
    return r.get("precision") or ("bf16-autocast" if r["recipe"].get("amp") else "fp32")


def _device_name(r: dict) -> str:
    return r.get("device_name") or r["env"].get("device_name") or r["env"].get("device", "?")


def _batch(r: dict):
    return r.get("batch_size") or r["recipe"].get("batch_size")


def _runtime(r: dict) -> str:
    """released (the released code's attention and no speed-ups) or optimized; older records had `optimize`."""
    recipe = r["recipe"]
    return recipe.get("runtime") or ("optimized" if recipe.get("optimize", True) else "unoptimized (no BN folding)")


def _newest(records: list[dict]) -> list[dict]:
    """One record per key (method or variant, dataset, source kind, seed): the newest."""
    best = {}
    for r in sorted(records, key=lambda r: r["created_at"]):
        best[(row_name(r), r["dataset"], r["kind"], _seed(r))] = r
    return list(best.values())


def _fmt(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value, ref) -> str:
    return "" if value is None or not ref else f"{100 * value / ref:.1f}"


# ---- provenance ------------------------------------------------------------------------------------
def describe_weights(weights: dict) -> str:
    """One line for a table's provenance: what a run record's encoders started from (its `weights` field)."""
    if weights.get("source"):
        return f"pretrained tiny encoders: {weights['source']}; NOT DETR/BERT weights"
    vision, language = weights.get("vision"), weights.get("language")
    if not vision and not language:
        return "random init (no pretrained encoder weights)"
    return f"vision {vision or 'random init'}, language {language or 'random init'}"


def provenance(title: str, records: list[dict], rules: list[str], command: str, what_data: str) -> str:
    def distinct(values):
        return ", ".join(sorted({str(v) for v in values})) or "none"

    commits = {f"{(r['env'].get('git') or {}).get('commit') or 'unknown'}"[:12]
               + (" (dirty)" if (r["env"].get("git") or {}).get("dirty") else "") for r in records}
    runs = [r for r in records if r["kind"] == "run"]  # profile records run random weights by design
    reused = [r["reused_from"] for r in runs if r.get("reused_from")]
    lines = [f"# {title}", ""]
    if any(r["data"] == "synthetic" for r in records):
        lines += [f"> **SYNTHETIC DATA.** {what_data}", ""]
    lines += [
        f"- data: {distinct(r['data'] for r in records)}",
        f"- preset(s): {distinct(r['preset'] for r in records)}",
        f"- device(s): {distinct(_device_name(r) for r in records)}",
        f"- precision: {distinct(_precision(r) for r in records)}",
        *([f"- encoders: {distinct(describe_weights(r.get('weights') or {}) for r in runs)}"] if runs else []),
        f"- commit(s): {', '.join(sorted(commits)) or 'none'}",
        f"- newest record: {max((r['created_at'] for r in records), default='none')} ({len(records)} records)",
        *([f"- reused: {len(reused)} of these records are copies of runs of the same configuration (`--reuse`): "
           + ", ".join(sorted(reused))] if reused else []),
        *[f"- counting: {rule}" for rule in rules],
        f"- regenerate: `{command}`",
        "",
    ]
    return "\n".join(lines)


# ---- main table --------------------------------------------------------------------------------------
def main_tables(runs: list[dict], baselines: list[dict] = ()) -> list[tuple[str, pd.DataFrame, list[dict]]]:
    """(heading, table, records) per (data, preset); rows = methods, then the text-blind floor rows of the same data
    kind (they hold for every preset); cells empty where no ok record exists."""
    out = []
    for data, preset in sorted({(r["data"], r["preset"]) for r in runs}, key=lambda k: (k[0] != "real", k[1])):
        group = _newest([r for r in runs if (r["data"], r["preset"]) == (data, preset)]
                        + [b for b in baselines if b["data"] == data])
        by_seed = _ok_by_row(group)
        ok = {key: recs[0] for key, recs in by_seed.items()}
        splits = [s for s in MAIN_SPLITS if s[:2] not in OPTIONAL or any(d == s[0] for _, d in ok)]
        rows = []
        for method in sorted({row_name(r) for r in group}, key=method_order):
            params = next((ok[(method, d)]["params"] for d, _, _ in splits if (method, d) in ok), None)
            mine = [ok[(method, d)] for d in dict.fromkeys(d for d, _, _ in splits) if (method, d) in ok]
            row = {"method": method,
                   "seeds (n)": _distinct(str(len(recs)) for (m, _), recs in by_seed.items()
                                          if m == method and recs[0]["kind"] == "run"),
                   "tunable (M)": _fmt(params["encoder_side_trainable"] / 1e6 if params else None),
                   "tunable %": _fmt(params["percent_encoder_side"] if params else None),
                   "encoder-side lr": _distinct(f"{r['recipe']['lr_encoder']:g}" for r in mine
                                                if "lr_encoder" in r["recipe"] and r["params"].get(
                                                    "encoder_side_trainable")) or ("-" if params else ""),
                   "epochs trained": _distinct(f"{r['train']['epoch']}/{r['recipe']['epochs']}" for r in mine
                                               if "train" in r and "epochs" in r["recipe"])}
            for dataset, split, label in splits:
                values = [100 * r["results"][split]["accuracy"] for r in by_seed.get((method, dataset), [])
                          if split in r["results"]]
                row[f"{_dataset_label(dataset, data)} {label}"] = _cell(values)
            rows.append(row)
        rows = _one_floor_row_where_the_rules_tie(rows)
        table = _filled(pd.DataFrame(rows))  # the default suite runs one dataset of five
        heading = f"{'Synthetic data' if data == 'synthetic' else 'Real data'}, preset {preset}"
        out.append((heading, table, group))
    return out


def _filled(table: pd.DataFrame) -> pd.DataFrame:
    """Only the columns where some row has a value."""
    return table.loc[:, [c for c in table.columns if table[c].ne("").any()]]


def _one_floor_row_where_the_rules_tie(rows: list[dict]) -> list[dict]:
    """The text-blind rules (largest, central, random) as one row when they give the same value in every column
    (on the synthetic set they tie by construction: every candidate of an expression is one of its referred objects),
    named for what it is and the rules that give it; otherwise a row each."""
    floors = [r for r in rows if r["method"].startswith(FLOOR)]
    values = {tuple(v for k, v in r.items() if k != "method") for r in floors}
    if len(floors) < 2 or len(values) != 1:
        return rows
    rules = " = ".join(r["method"].split(":", 1)[1].strip() for r in floors)
    return [r for r in rows if r not in floors] + [{**floors[0], "method": f"{FLOOR} floor ({rules})"}]


def _ok_by_row(group: list[dict]) -> dict:
    """(row, dataset) -> the ok records of its seeds, in seed order."""
    by_seed = {}
    for r in sorted(group, key=lambda r: str(_seed(r))):
        if r["status"] == "ok":
            by_seed.setdefault((row_name(r), r["dataset"]), []).append(r)
    return by_seed


REFERENCES = ("frozen", "full")
DIFFERENCE_RULE = (
    "difference tables: Acc@0.5 points of the row minus the reference row (frozen: the floor every PETL method must "
    "beat; full: fine-tuning), on the same eval expressions and the seeds both rows have; [low, high] = 95% paired "
    "bootstrap interval over expressions (harness/stats.py); * = the interval excludes 0, the difference holds; vs "
    "default (where a table has variant rows, `method [tag]`): the variant minus its method's own row; a row "
    "'(selected on val)' is compared with frozen's and full's rows selected on val. Seed spread is the main table's "
    "+- std.")


def _difference_cell(d) -> str:
    if d is None:
        return ""
    return f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{' *' if holds(d) else ''} (s={d['seeds']})"


def _reference(ref: str, method: str, names) -> str:
    """The row `method` is compared with as `ref`: a row selected on val meets the reference's row selected on val
    (each at the rate the same rule chose), every other row the reference's published row."""
    selected = ref + SELECTED_SUFFIX
    return selected if method.endswith(SELECTED_SUFFIX) and selected in names else ref


def difference_table(group: list[dict]) -> pd.DataFrame | None:
    """Per method row, its paired difference to `frozen` and to `full` on every split both have (None: nothing
    to compare, e.g. records without per-expression outcomes)."""
    by_seed = _ok_by_row([r for r in group if r["kind"] == "run"])
    data = group[0]["data"]
    splits = [s for s in MAIN_SPLITS if any(d == s[0] for _, d in by_seed)]
    names = sorted({m for m, _ in by_seed}, key=method_order)
    # a variant (`method [tag]`, a selected rate) is compared with its method's own row too: what the variant changes
    default = {m: _base(m) for m in names if _base(m) != m and _base(m) in names}
    rows = []
    for method in names:
        row = {"method": method}
        for ref in REFERENCES + (("default",) if default else ()):
            other = default.get(method) if ref == "default" else _reference(ref, method, names)
            for dataset, split, label in splits:
                d = (None if other in (None, method) else
                     paired_difference(by_seed.get((method, dataset), []), by_seed.get((other, dataset), []), split))
                row[f"vs {ref}: {_dataset_label(dataset, data)} {label}"] = _difference_cell(d)
        rows.append(row)
    table = _filled(pd.DataFrame(rows))
    return table if len(table.columns) > 1 else None


SCHEDULE_RULE = (
    "schedule check: from each run's val Acc@0.5 per epoch; leaves the plateau = the first epoch at >= the text-blind "
    "floor's val + 10 points (of the epochs trained); converged = the best val is within 1 point of the mean val over "
    "the last 20% of epochs; seed spread = sample std of the final val over seeds")


def _val_curve(r: dict) -> list[tuple[int, float]]:
    """(epoch, val Acc@0.5 %) at every validation of a run record; empty without a history."""
    history = (r.get("train") or {}).get("history") or []
    return [(h["epoch"], 100 * h["val_accuracy"]) for h in history if "val_accuracy" in h]


def _val_floors(records: list[dict]) -> dict:
    """dataset -> the best text-blind rule's val Acc@0.5 (%) among the baseline records."""
    floors = {}
    for b in records:
        if b["kind"] == "baseline" and b["status"] == "ok" and "val" in b["results"]:
            floors[b["dataset"]] = max(floors.get(b["dataset"], 0.0), 100 * b["results"]["val"]["accuracy"])
    return floors


def _schedule_figures(r: dict, threshold: float | None) -> tuple[str, float] | None:
    """(epoch the run leaves the plateau, best val minus the mean over the last 20% of epochs), or None without a
    val history."""
    curve = _val_curve(r)
    if not curve:
        return None
    val = [v for _, v in curve]
    exit_epoch = next((str(e) for e, v in curve if threshold is not None and v >= threshold),
                      "never" if threshold is not None else "-")
    return f"{exit_epoch}/{r['train']['epoch']}", max(val) - statistics.fmean(val[-max(1, len(val) // 5):])


def schedule_table(group: list[dict]) -> pd.DataFrame | None:
    """Per row and dataset with a val history: when its seeds leave the fusion's loss plateau, whether they
    converged, and the seed spread (SCHEDULE_RULE); None when no run has a history."""
    floors = _val_floors(group)
    rows = []
    for (method, dataset), recs in sorted(_ok_by_row([r for r in group if r["kind"] == "run"]).items(),
                                          key=lambda item: (method_order(item[0][0]), item[0][1])):
        floor = floors.get(dataset)
        figures = [f for f in (_schedule_figures(r, None if floor is None else floor + 10) for r in recs) if f]
        if not figures:
            continue
        finals = [100 * r["results"]["val"]["accuracy"] for r in recs if "val" in r["results"]]
        rows.append({"method": method, "dataset": dataset, "seeds": str(len(figures)),
                     "leaves the plateau (epoch, per seed)": ", ".join(e for e, _ in figures),
                     "best - last-20% mean (per seed)": ", ".join(f"{gap:.1f}" for _, gap in figures),
                     "converged": f"{sum(gap <= 1 for _, gap in figures)}/{len(figures)}",
                     "final val std": f"{statistics.stdev(finals):.1f}" if len(finals) > 1 else ""})
    return _filled(pd.DataFrame(rows)) if rows else None


def _distinct(values) -> str:
    return ", ".join(dict.fromkeys(values))


def _dataset_label(dataset: str, data: str) -> str:
    label = get_spec(dataset).label
    return f"synthetic ({label}-style)" if data == "synthetic" else label


# ---- efficiency table --------------------------------------------------------------------------------
def _efficiency_figures(r: dict) -> dict:
    """The figures one record holds, whichever kind it is (missing ones None)."""
    flops, mem, t = r["flops"], r["memory"], r["time"]
    fwd = flops.get("forward", flops) if isinstance(flops.get("forward", flops), dict) else {}
    step = flops.get("train_step") or {}
    if r["kind"] == "profile":
        memory = mem.get(mem.get("primary", ""))
        memory_what = mem.get("what")
    elif mem.get("device") == "cuda" and mem.get("peak_allocated_bytes"):
        memory, memory_what = mem["peak_allocated_bytes"], mem.get("what")
    else:  # a CPU run's process RSS is not a training-memory figure
        memory, memory_what = None, None
    how = t.get("epoch_s_how") or ""
    return {"gmacs": fwd.get("gmacs"), "gflops": fwd.get("gflops"), "tflops": step.get("tflops"),
            "memory": memory, "memory_what": memory_what, "step": t.get("median_step_s"),
            "epoch": t.get("epoch_s"), "epoch_how": "extrap." if how.startswith("extrapolated") else "meas.",
            "samples": t.get("samples_per_s"), "timed_steps": t.get("timed_steps")}


@functools.lru_cache(maxsize=None)
def _tunable_today(method: str, config_json: str, model_json: str) -> int | None:
    """The encoder-side trainable count today's code gives this method, configuration and model (what `harness
    methods` counts), or None where today's code cannot build it (a method or an option gone)."""
    import json

    import torch

    from harness.model.config import config_from_dict
    from harness.model.transvg import TransVG
    from harness.model import count_parameters
    from methods import apply_method, build_method

    try:
        with torch.device("meta"):
            model = TransVG(config_from_dict(json.loads(model_json)))
            apply_method(build_method(method, json.loads(config_json)), model)
    except (HarnessError, KeyError, TypeError, ValueError):
        return None
    return count_parameters(model)["encoder_side_trainable"]


def _counts_today(r: dict) -> str:
    """'same' when the record's tunable count is what today's code gives, else what today's is ('stale')."""
    import json

    if not r.get("model_config") or r["kind"] not in ("run", "profile"):
        return ""
    today = _tunable_today(r["method"], json.dumps(r["method_config"], sort_keys=True),
                           json.dumps(r["model_config"], sort_keys=True))
    if today is None:
        return "stale: the method or an option is gone"
    if today == r["params"]["encoder_side_trainable"]:
        return "same"
    return f"stale: today {today / 1e6:.2f}M"


def efficiency_tables(profiles: list[dict], runs: list[dict]):
    """(heading, table, records, memory notes) per (preset, device, precision, batch, runtime)."""
    pool = [r for r in profiles + runs if r["status"] == "ok"]

    def group(r):
        return r["preset"], _device_name(r), _precision(r), _batch(r), _runtime(r)

    out = []
    for key in sorted({group(r) for r in pool}, key=str):
        members = [r for r in pool if group(r) == key]
        chosen = {}  # method -> record: a profile record if any, else the newest run on unc, else the newest run
        for r in sorted(members, key=lambda r: (r["kind"] == "profile", r["dataset"] == "unc", r["created_at"])):
            chosen[row_name(r)] = r
        figs = {m: _efficiency_figures(r) for m, r in chosen.items()}
        full = figs.get("full", {})
        rows = []
        for method in sorted(chosen, key=method_order):
            r, f = chosen[method], figs[method]
            p = r["params"]
            epoch = f"{f['epoch'] / 60:.1f} ({f['epoch_how']})" if f["epoch"] else ""
            rows.append({
                "method": method, "tunable (M)": _fmt(p["encoder_side_trainable"] / 1e6),
                "tunable %": _fmt(p["percent_encoder_side"]), "all trainable (M)": _fmt(p["trainable"] / 1e6),
                "fwd GMACs (b=1)": _fmt(f["gmacs"]), "fwd GFLOPs (b=1)": _fmt(f["gflops"]),
                "train-step TFLOPs": "" if f["tflops"] is None else f"{f['tflops']:.4g}",
                "peak memory (GiB)": _fmt(f["memory"] and f["memory"] / 2**30, 3),
                "memory % of full": _pct(f["memory"], full.get("memory")),
                "step (ms)": _fmt(f["step"] and 1000 * f["step"], 1),
                "step % of full": _pct(f["step"], full.get("step")),
                "epoch (min)": epoch, "epoch % of full": _pct(f["epoch"], full.get("epoch")),
                "samples/s": _fmt(f["samples"], 1),
                "source": "profile" if r["kind"] == "profile" else f"run {r['run_id']}",
                "counts as today": _counts_today(r),
            })
        notes = sorted({f["memory_what"] for f in figs.values() if f["memory_what"]})
        short = [m for m, f in figs.items() if f["timed_steps"] is not None and f["timed_steps"] < 20]
        if short:
            notes.append(f"fewer than 20 timed steps (smoke figures, not for reporting): {', '.join(sorted(short))}")
        stale = [row["method"] for row in rows if row["counts as today"].startswith("stale")]
        if stale:
            notes.append("stale rows (their records were made when the method counted other parameters than today's "
                         f"`harness methods`; rerun them before comparing): {', '.join(stale)}")
        preset, device, precision, batch, runtime = key
        out.append((f"preset {preset}, {device}, {precision}, batch {batch}, {runtime} runtime", pd.DataFrame(rows),
                    list(chosen.values()), notes))
    return out


# ---- trade-off plot ----------------------------------------------------------------------------------
def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K" if n >= 100 else str(n)


def _floor_line(ax, value: float) -> None:
    """The text-blind floor, drawn the same way in every figure."""
    ax.axhline(value, ls="--", color="grey", lw=1, label=f"text-blind floor (best rule) {value:.1f}")


def _fit_title(ax, text: str, width: int = 80) -> None:
    import textwrap

    ax.set_title("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=8)


def tradeoff_plot(mains, effs, path: Path) -> Path:
    return _save(tradeoff_figure(mains, effs), path)


def curves_plot(mains, path: Path) -> Path:
    return _save(curves_figure(mains), path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def tradeoff_figure(mains, effs):
    """Accuracy against training memory, bubble area = tunable parameters (as Fig. 1 of M2IST)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    points, acc_section = [], None
    for heading, table, recs in mains:  # real data first, then by preset
        col = f"{_dataset_label('unc', recs[0]['data'])} val"
        if col in table and table[col].ne("").any():
            acc_section = heading, table, recs, col
            break
    if acc_section:
        heading, table, recs, acc_col = acc_section
        acc = {row["method"]: cell_mean(row[acc_col]) for _, row in table.iterrows() if row[acc_col]}
        # memory group: most methods in common with the accuracies; then same preset, then a GPU group
        candidates = [(sum(1 for m, mem in zip(t["method"], t["peak memory (GiB)"]) if m in acc and mem),
                       e_recs[0]["preset"] == recs[0]["preset"], e_recs[0]["memory"].get("device") == "cuda", i)
                      for i, (_, t, e_recs, _) in enumerate(effs)]
        if candidates and max(candidates)[0]:
            e_heading, e_table, e_recs, _ = effs[max(candidates)[3]]
            use_pct = bool(e_table.loc[e_table["method"] == "full", "memory % of full"].ne("").any())
            col = "memory % of full" if use_pct else "peak memory (GiB)"
            for _, row in e_table.iterrows():
                if row["method"] in acc and row[col]:
                    tunable = next(r["params"]["encoder_side_trainable"] for r in e_recs if row_name(r) == row["method"])
                    points.append((row["method"], float(row[col]), acc[row["method"]], tunable))
    if points:
        floor = max((cell_mean(row[acc_col]) for _, row in table.iterrows()
                     if row["method"].startswith(FLOOR) and row[acc_col]), default=None)
        if floor is not None:
            _floor_line(ax, floor)
        by_seed = _ok_by_row([r for r in recs if r["kind"] == "run"])
        paired = {m: paired_difference(by_seed.get((m, "unc"), []), by_seed.get(("frozen", "unc"), []), "val")
                  for m, _, _, _ in points if m != "frozen"}
        biggest = max(p[3] for p in points) or 1.0
        for method, x, y, tunable in sorted(points, key=lambda p: method_order(p[0])):
            mark = " *" if paired.get(method) and holds(paired[method]) else ""
            # a legend names the bubbles: labels beside them overlapped wherever two methods shared a memory figure
            ax.scatter(x, y, s=60 + 1500 * tunable / biggest, alpha=0.6, color=method_colour(method),
                       edgecolors="black", linewidths=0.5, label=f"{method}{mark} ({_count(tunable)} tunable)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=0.5, frameon=False)
        cpu = any(r["memory"].get("device") == "cpu" for r in e_recs)
        kind = ("CPU proxy: saved activations + params + grads + AdamW state" if cpu
                else "peak torch.cuda.max_memory_allocated")
        ax.set_xlabel(f"training memory, {'% of full fine-tuning' if use_pct else 'GiB'}\n({kind})")
        ax.set_ylabel(f"Acc@0.5 (%), {acc_col}")
        loud = "SYNTHETIC DATA - " if recs[0]["data"] == "synthetic" else ""
        _fit_title(ax, f"{loud}accuracy: {heading} ({', '.join(sorted({_device_name(r) for r in recs}))})\n"
                       f"memory: {e_heading}\nbubble area = tunable (encoder-side) parameters"
                       + ("; * = differs from frozen (95% paired bootstrap)" if any(paired.values()) else ""))
        ax.margins(0.25)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no method has both a RefCOCO-style val accuracy\nand a peak-memory figure in the records",
                ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def curves_figure(mains):
    """Val Acc@0.5 per epoch of every method's run on the first group's RefCOCO-style set (real data first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    drawn = False
    for heading, _, recs in mains:
        first_seed = {}  # one line per row: its lowest seed
        unc_ok = (r for r in recs if r["status"] == "ok" and r["dataset"] == "unc")
        for r in sorted(unc_ok, key=lambda r: str(_seed(r))):
            first_seed.setdefault(row_name(r), r)
        runs = [first_seed[name] for name in sorted(first_seed, key=method_order)]
        # A method's colour (method_colour, as in every figure), one line style per row of it (published, selected,
        # grid values), so that a method's rows read as a family.
        styles = {}
        for r in runs:
            points = _val_curve(r)
            if points:
                n = styles[r["method"]] = styles.get(r["method"], -1) + 1
                ax.plot(*zip(*points), marker="o" if len(points) < 3 else None, label=row_name(r),
                        color=method_colour(r["method"]), ls=LINE_STYLES[n % len(LINE_STYLES)])
                drawn = True
        floor = _val_floors(recs).get("unc")
        if drawn and floor is not None:
            _floor_line(ax, floor)
        if drawn:
            loud = "SYNTHETIC DATA - " if recs[0]["data"] == "synthetic" else ""
            _fit_title(ax, f"{loud}{heading}: val Acc@0.5 per epoch ({_dataset_label('unc', recs[0]['data'])})\n"
                           "one line per row: its lowest seed")
            ax.set_xlabel("epoch")
            ax.set_ylabel("val Acc@0.5 (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
            break
    if not drawn:
        ax.text(0.5, 0.5, "no run record with a validation history on a RefCOCO-style set", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    return fig


# ---- files -------------------------------------------------------------------------------------------
def _escaped(value):
    """Record text as one markdown cell: a "|" or a line break from a record (a method name, a tag) would add columns
    or rows, and "<script>" would be markup."""
    if not isinstance(value, str):
        return value
    return html.escape(re.sub(r"[\r\n]+", " ", value), quote=False).replace("|", "\\|")


def _markdown(table: pd.DataFrame) -> str:
    return table.map(_escaped).to_markdown(index=False, disable_numparse=True) if len(table) else "(no records)"


def selected_runs(path) -> tuple[list[dict], str]:
    """The run records of each method's configuration a `harness select` file chose (every seed), as rows named
    'METHOD (selected on val)', and a provenance line saying how they were chosen."""
    from harness.sweep import grid_value, read_selection

    sel = read_selection(path)
    key, rows = sel["key"], []
    for r in read_folder(sel["runs"]):
        entry = sel["methods"].get(r.get("method"))
        if r["kind"] == "run" and r["dataset"] == sel["dataset"] and entry and grid_value(r, key) == entry["chosen"]:
            rows.append({**r, "row": r["method"] + SELECTED_SUFFIX})
    return rows, (f"- selected on val: rows '(selected on val)' train the {key} chosen as: {sel['rule']} "
                  f"(`harness select`, {path}; grid and seeds in {sel['runs']}); the other rows use each method's "
                  "published rates (methods/*.yaml)\n")


def build_tables(runs="results/runs", profiles="results/profile", out="results", selected=None) -> list[Path]:
    if not Path(runs).is_dir():  # a typo must not replace the committed tables with empty ones
        raise HarnessError(f"run record folder {runs} does not exist: pass --runs with the folder of run records")
    records = read_folder(runs)
    all_runs = [r for r in records if r["kind"] == "run"]
    floors = [r for r in records if r["kind"] == "baseline"]
    all_profiles = [r for r in read_folder(profiles) if r["kind"] == "profile"]
    command = f"harness table --runs {runs} --profiles {profiles} --out {out}"
    chosen, how = selected_runs(selected) if selected else ([], "")
    command += f" --selected {selected}" if selected else ""
    out = Path(out)

    mains = main_tables(all_runs + chosen, floors)
    used = [r for _, _, recs in mains for r in recs]
    text = provenance(
        "Main results: Acc@0.5 (%)", used, [COUNTING, DIFFERENCE_RULE, SCHEDULE_RULE], command,
        "Columns named 'synthetic (X-style)' come from the generated synthetic set in X's index format; they "
        "are not RefCOCO / RefCOCO+ / RefCOCOg / ReferItGame results and must never be reported as such.") + how
    for heading, table, recs in mains:
        text += f"\n## {heading}\n\n{_markdown(table)}\n"
        differences = difference_table(recs)
        if differences is not None:
            text += f"\n### {heading}: differences to frozen and to full (Acc@0.5 points, 95% interval)\n\n"
            text += f"{_markdown(differences)}\n"
        schedule = schedule_table(recs)
        if schedule is not None:
            text += f"\n### {heading}: schedule check\n\n{_markdown(schedule)}\n"
        bad = sorted(f"{r['run_id']} ({r['status']})" for r in recs if r["status"] != "ok")
        if bad:
            text += f"\nEmpty cells include runs that did not finish: {', '.join(bad)}.\n"
    if not mains:
        text += f"\n(no run records in {runs})\n"
    paths = [write_text_atomic(out / "main.md", text)]

    effs = efficiency_tables(all_profiles, all_runs)
    used = [r for _, _, recs, _ in effs for r in recs]
    text = provenance(
        "Efficiency: parameters, FLOPs, peak training memory, time", used, [COUNTING, FLOPS_RULE], command,
        "Profile records are measured on random tensors at the preset's real input shapes and run-record figures "
        "on whatever data the run trained on; data content does not change these figures, but no figure here "
        "comes from training on a real dataset unless its record says data = real.")
    text += ("- memory: CUDA = torch.cuda.max_memory_allocated over the timed training steps (model, gradients and "
             "AdamW state included); CPU = a proxy (saved activations + params + grads + AdamW), not comparable "
             "with GPU figures; CPU run records give no memory figure (process RSS only)\n"
             "- time: median over timed steps after warm-up; epoch (extrap.) = steps per epoch x median step, "
             "(meas.) = measured epoch; source = profile record or run record\n"
             "- runtime: released = the released TransVG/M2IST code's conditions (nn.MultiheadAttention with "
             "need_weights=True and BERT's explicit attention, both keeping the attention maps for backward; no "
             "BatchNorm folding, channels-last or cuDNN autotuning: the paper's Fig. 1 conditions); optimized = "
             "BatchNorm folding, fused attention (SDPA), channels-last and cuDNN autotuning on CUDA\n")
    for heading, table, _, notes in effs:
        text += f"\n## {heading}\n\n{_markdown(table)}\n"
        text += "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
    if not effs:
        text += f"\n(no profile records in {profiles} and no run records in {runs})\n"
    paths.append(write_text_atomic(out / "efficiency.md", text))
    paths.append(tradeoff_plot(mains, effs, out / "tradeoff.png"))
    paths.append(curves_plot(mains, out / "curves.png"))
    return paths
