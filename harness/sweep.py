"""Learning-rate selection on val (the sweep suite, `harness select`), and what a run reads back from it.

Protocol (suites/sweep.yaml): each method's encoder-side learning rate (`lr_encoder`: its PETL modules, or the
encoders themselves for full fine-tuning) is trained over a grid at seed 13; for each method the value with the best
Acc@0.5 on the dataset's val split is chosen (ties: the smaller rate); the chosen configuration then trains with
more seeds. Only the val split is read: test splits never choose anything. Methods without encoder-side parameters
(frozen) have nothing to tune and keep their published configuration. The fusion and head keep the recipe's rate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from datasets.catalog import get_spec
from datasets.errors import DataError
from harness.errors import HarnessError
from harness.options import yaml_value
from harness.palette import method_colour
from harness.records import now, read_record, write_json_atomic

SELECTION_KIND = "selection"


NOT_ON_GRID = object()


def grid_value(record: dict, key: str):
    """The `key` a run trained with as a point of the grid: its --set override, None where it has none (the
    published setting), NOT_ON_GRID for a variant (any other override)."""
    overrides = record.get("overrides") or {}
    recipe = overrides.get("recipe") or {}
    if overrides.get("method") or set(recipe) - {key}:
        return NOT_ON_GRID
    return recipe.get(key)


def select(runs, dataset: str, key: str = "lr_encoder", seed: int = 13) -> dict:
    """The selection over the ok run records of `dataset` in folder `runs` at `seed`: per method, val Acc@0.5 per
    grid value and the chosen value (reads results[val] only)."""
    val = get_spec(dataset).eval_splits[0]
    folder = Path(runs)
    if not folder.is_dir():
        raise HarnessError(f"run record folder {runs} does not exist: run the sweep's grid first")
    grids: dict[str, dict] = {}
    for path in sorted(folder.glob("*.json")):
        r = read_record(path)
        if r["kind"] != "run" or r["status"] != "ok" or r["dataset"] != dataset or r["recipe"].get("seed") != seed:
            continue
        value = grid_value(r, key)
        if value is not NOT_ON_GRID:
            grids.setdefault(r["method"], {})[value] = r["results"][val]["accuracy"]
    if not grids:
        raise HarnessError(f"no finished {dataset} runs at seed {seed} in {runs}: run the sweep's grid first")
    methods = {}
    for method, grid in sorted(grids.items()):
        tuned = {v: acc for v, acc in grid.items() if v is not None}
        if tuned:  # best val accuracy; ties go to the smaller rate
            chosen = min(tuned, key=lambda v: (-tuned[v], v))
            methods[method] = {"chosen": chosen, "val_accuracy": tuned[chosen],
                               "grid": {f"{v:g}": tuned[v] for v in sorted(tuned)}}
        else:  # nothing tuned (frozen): the published setting
            methods[method] = {"chosen": None, "val_accuracy": grid[None], "grid": {}}
    return {"kind": SELECTION_KIND, "key": key, "dataset": dataset, "split": val, "seed": seed,
            "runs": str(runs), "methods": methods, "created_at": now(),
            "rule": f"per method, the {key} with the highest {dataset} {val} Acc@0.5 at seed {seed} (ties: the "
                    "smaller); test splits are not read"}


def read_selection(path) -> dict:
    try:
        selection = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HarnessError(f"selection file {path} does not exist: run `harness select` (the sweep suite) "
                           "first") from None
    except (OSError, ValueError) as err:
        raise HarnessError(f"selection file {path} is unreadable ({type(err).__name__}): rerun `harness "
                           "select`") from None
    if not isinstance(selection, dict) or selection.get("kind") != SELECTION_KIND:
        raise HarnessError(f"{path} is not a selection file (kind {SELECTION_KIND!r}, written by `harness select`)")
    problem = _selection_problem(selection)
    if problem:
        raise HarnessError(f"selection file {path}: {problem}; rerun `harness select`")
    return selection


def _selection_problem(sel: dict) -> str:
    for field in ("key", "dataset", "split", "runs", "rule"):
        if not isinstance(sel.get(field), str):
            return f"'{field}' must be a string, got {sel.get(field)!r}"
    try:
        val = get_spec(sel["dataset"]).eval_splits[0]
    except DataError as err:
        return str(err)
    if sel["split"] != val:  # a choice made on a test split would label its rows "(selected on val)" falsely
        return f"it was chosen on {sel['dataset']} {sel['split']!r}, not on its validation split {val!r}"
    if not isinstance(sel.get("methods"), dict) or not sel["methods"]:
        return "'methods' must map each method to its choice"
    for method, entry in sel["methods"].items():
        if not isinstance(entry, dict) or "chosen" not in entry or not isinstance(entry.get("grid", {}), dict):
            return f"method '{method}' needs 'chosen' (a value or null) and 'grid' (a mapping)"
        chosen = entry["chosen"]
        if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, (int, float))
                                   or not math.isfinite(chosen)):
            return f"method '{method}' chose {chosen!r}, not a finite number or null"
    return ""


def selected_set(path, method: str) -> list[str]:
    """The --set overrides that give `method` its selected configuration (none where nothing was tuned)."""
    selection = read_selection(path)
    if method not in selection["methods"]:
        raise HarnessError(f"{path} selects nothing for method '{method}' (it has "
                           f"{', '.join(selection['methods'])}): add the method to the sweep's grid")
    chosen = selection["methods"][method]["chosen"]
    return [] if chosen is None else [f"{selection['key']}={yaml_value(chosen)}"]


def sensitivity_plot(selection: dict, path) -> Path:
    """Val Acc@0.5 against the tuned rate, one line per method, the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, entry in selection["methods"].items():
        if not entry["grid"]:
            # a legend entry, not a label on the line: the tuned methods' curves run through the top of the plot
            ax.axhline(100 * entry["val_accuracy"], ls=":", lw=1, color="grey", label=f"{method} (nothing to tune)")
            continue
        xs = [float(v) for v in entry["grid"]]
        ax.plot(xs, [100 * a for a in entry["grid"].values()], marker="o", label=method, color=method_colour(method))
        ax.plot([entry["chosen"]], [100 * entry["val_accuracy"]], marker="*", ms=12, color=method_colour(method))
    ax.set_xscale("log")
    ax.set_xlabel(f"{selection['key']} (encoder-side learning rate)")
    ax.set_ylabel(f"{selection['dataset']} {selection['split']} Acc@0.5 (%)")
    ax.set_title(f"Sensitivity at seed {selection['seed']} (star: selected on {selection['split']})", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the plot
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_select(runs, dataset: str, out, key: str = "lr_encoder", seed: int = 13) -> dict:
    """`harness select`: the selection file and the sensitivity plot beside it."""
    selection = select(runs, dataset, key, seed)
    out = Path(out)
    write_json_atomic(out, selection)
    sensitivity_plot(selection, out.with_name("sensitivity.png"))
    for method, entry in selection["methods"].items():
        grid = ", ".join(f"{v}: {100 * a:.2f}" for v, a in entry["grid"].items()) or "nothing to tune"
        chosen = "published" if entry["chosen"] is None else f"{key} {entry['chosen']:g}"
        print(f"{method}: {chosen} (val {100 * entry['val_accuracy']:.2f}; grid {grid})")
    return selection

