"""The sweep: grid expansion, selection on val only, runs of the selected configuration, tables with published and
selected rows, and the same suite submitted through submitit's own executors."""
import json

import pytest
import yaml

from harness import sweep
from harness.cli import main
from harness.errors import HarnessError
from harness.records import write_json_atomic
from harness.suites import expand, load_suite
from harness.tables import method_order
from methods import method_names


def test_sweep_suite_grids_every_tunable_method_then_seeds_the_choice():
    jobs = expand(load_suite("sweep"))
    grid = [j for j in jobs if j.argv[0] == "run" and "--selected" not in j.argv]
    seeds = [j for j in jobs if j.argv[0] == "run" and "--selected" in j.argv]
    per_method = {}
    for job in grid:
        method = job.argv[job.argv.index("--method") + 1]
        per_method.setdefault(method, []).append([a for a in job.argv if a.startswith("lr_encoder=")])
    assert per_method.pop("frozen") == [[]]  # nothing to tune: one run, published setting
    assert all(v == [["lr_encoder=1.0e-05"], ["lr_encoder=0.0001"], ["lr_encoder=0.001"]]
               for v in per_method.values()) and set(per_method) == set(method_names()) - {"frozen"}
    # two more seeds of every method's chosen configuration, frozen's included
    assert {j.argv[j.argv.index("--seed") + 1] for j in seeds} == {"14", "15"}
    assert len(seeds) == 2 * len(method_names())
    names = [j.argv[0] for j in jobs]
    assert names.index("select") > max(i for i, j in enumerate(jobs) if j in grid)  # select after the whole grid
    assert names.index("select") < min(i for i, j in enumerate(jobs) if j in seeds) and jobs[names.index("select")].barrier


def _record(path, method, lr, results, seed=13, dataset="unc"):
    write_json_atomic(path, {"kind": "run", "status": "ok", "method": method, "dataset": dataset,
                             "recipe": {"seed": seed, "lr_encoder": lr if lr is not None else 1e-5},
                             "overrides": {"method": {}, "recipe": {} if lr is None else {"lr_encoder": lr}},
                             "results": results})


class ValOnly(dict):
    """A record's results that fail the test if anything but val is read."""

    def __getitem__(self, split):
        assert split == "val", f"selection read the {split} split"
        return super().__getitem__(split)

    def get(self, split, default=None):
        assert split == "val", f"selection read the {split} split"
        return super().get(split, default)

    def items(self):
        raise AssertionError("selection iterated over the splits")

    values = items


def test_selection_is_chosen_on_val_and_never_reads_a_test_split(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    # on testA/testB the 1e-3 run is far better: a selection that looked there would pick it
    for lr, val, test in ((1e-5, 0.30, 0.10), (1e-4, 0.40, 0.20), (1e-3, 0.35, 0.90)):
        _record(runs / f"lora_{lr}.json", "lora", lr, {"val": {"accuracy": val}, "testA": {"accuracy": test},
                                                        "testB": {"accuracy": test}})
    _record(runs / "lora_tie.json", "adapter", 1e-4, {"val": {"accuracy": 0.5}, "testA": {"accuracy": 0.0}})
    _record(runs / "adapter_small.json", "adapter", 1e-5, {"val": {"accuracy": 0.5}, "testA": {"accuracy": 0.0}})
    _record(runs / "frozen.json", "frozen", None, {"val": {"accuracy": 0.2}, "testA": {"accuracy": 0.0}})
    _record(runs / "lora_seed14.json", "lora", 1e-3, {"val": {"accuracy": 0.99}}, seed=14)  # not the grid's seed
    def guarded(path):  # these minimal records skip the schema check
        record = json.loads(path.read_text())
        record["results"] = ValOnly(record["results"])
        return record

    monkeypatch.setattr(sweep, "read_record", guarded)
    assert main(["select", "--runs", str(runs), "--dataset", "unc", "--out", str(tmp_path / "sel.json")]) == 0
    sel = json.loads((tmp_path / "sel.json").read_text())
    assert sel["split"] == "val" and sel["methods"]["lora"]["chosen"] == 1e-4
    assert sel["methods"]["lora"]["grid"] == {"1e-05": 0.30, "0.0001": 0.40, "0.001": 0.35}
    assert sel["methods"]["adapter"]["chosen"] == 1e-5  # a tie goes to the smaller rate
    assert sel["methods"]["frozen"]["chosen"] is None and (tmp_path / "sensitivity.png").stat().st_size > 0
    assert sweep.selected_set(tmp_path / "sel.json", "lora") == ["lr_encoder=0.0001"]
    assert sweep.selected_set(tmp_path / "sel.json", "frozen") == []
    with pytest.raises(HarnessError, match="selects nothing for method 'm2ist'"):
        sweep.selected_set(tmp_path / "sel.json", "m2ist")
    with pytest.raises(HarnessError, match="does not exist: run `harness select`"):
        sweep.selected_set(tmp_path / "missing.json", "lora")


@pytest.mark.parametrize("change, message", [
    (lambda sel: sel.update(split="testA"), "chosen on unc 'testA', not on its validation split 'val'"),
    (lambda sel: sel.pop("methods"), "'methods' must map each method"),
    (lambda sel: sel.update(methods=["lora"]), "'methods' must map each method"),
    (lambda sel: sel["methods"]["lora"].pop("chosen"), "method 'lora' needs 'chosen'"),
    (lambda sel: sel.pop("key"), "'key' must be a string"),
    (lambda sel: sel["methods"]["lora"].update(chosen="fast"), "method 'lora' chose 'fast'"),
])
def test_a_damaged_or_test_split_selection_is_one_line_in_table_and_run(tmp_path, capsys, change, message):
    sel = {"kind": sweep.SELECTION_KIND, "key": "lr_encoder", "dataset": "unc", "split": "val", "seed": 13,
           "runs": str(tmp_path / "runs"), "rule": "...", "methods": {"lora": {"chosen": 1e-4, "grid": {}}}}
    change(sel)
    (tmp_path / "runs").mkdir()
    (tmp_path / "sel.json").write_text(json.dumps(sel))
    for argv in (["table", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t"), "--selected",
                  str(tmp_path / "sel.json")],
                 ["run", "--method", "lora", "--dataset", "unc", "--selected", str(tmp_path / "sel.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: selection file") and message in err and err.count("\n") == 1, err


def test_a_selected_row_follows_its_published_row():
    rows = ["vlpet (selected on val)", "m2ist", "text-blind: central", "full (selected on val)", "adapter", "frozen",
            "m2ist (selected on val)", "vlpet", "full", "frozen (selected on val)", "adapter (selected on val)"]
    assert sorted(rows, key=method_order) == [
        "full", "full (selected on val)", "frozen", "frozen (selected on val)", "adapter", "adapter (selected on val)",
        "vlpet", "vlpet (selected on val)", "m2ist", "m2ist (selected on val)", "text-blind: central"]
    grid = ["vlpet [lr_encoder-0.001]", "vlpet [lr_encoder-1.0e-05]", "vlpet", "vlpet [lr_encoder-0.0001]"]
    assert sorted(grid, key=method_order) == [
        "vlpet", "vlpet [lr_encoder-1.0e-05]", "vlpet [lr_encoder-0.0001]", "vlpet [lr_encoder-0.001]"]


def _sweep_file(tmp_path, flags, methods=("lora",), grid=(1.0e-4, 1.0e-3)):
    out, work = str(tmp_path / "sweep" / "runs"), str(tmp_path / "work")
    sel = str(tmp_path / "sweep" / "selection.json")
    jobs = [{"run": {**flags, "method": list(methods), "grid": {"lr_encoder": list(grid)}, "output": out,
                     "work_dir": work}},
            {"select": {"runs": out, "dataset": "unc", "out": sel}},
            {"run": {**flags, "method": list(methods), "seed": [14], "selected": sel, "output": out,
                     "work_dir": work}},
            {"table": {"runs": str(tmp_path / "published"), "profiles": str(tmp_path / "none"),
                       "out": str(tmp_path)}}]  # finds sweep/selection.json there by itself, as results/ does
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"description": "test sweep", "jobs": jobs}))
    return path, out


@pytest.mark.parametrize("launcher", ["local", "debug"])
def test_a_sweep_through_submitits_executor_finds_every_record(tiny_run_flags, tmp_path, launcher):
    """The submission path with submitit's own executors (local: one process per job, as on a node; debug: in this
    process): both grid points, the selection, the chosen configuration's second seed, and the tables."""
    (tmp_path / "published").mkdir()
    path, out = _sweep_file(tmp_path, tiny_run_flags)
    argv = ["suite", str(path), "--logs", str(tmp_path / "logs"), "--record", str(tmp_path / "suite.json"),
            "--launcher", launcher, "--time", "10"]
    assert main(argv) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "sweep" / "runs").glob("*.json")}
    sel = json.loads((tmp_path / "sweep" / "selection.json").read_text())
    chosen = sel["methods"]["lora"]["chosen"]
    tag = f"lr_encoder-{sweep.yaml_value(chosen)}"
    assert set(records) == {"unc_lora_tiny_lr_encoder-0.0001", "unc_lora_tiny_lr_encoder-0.001",
                            f"unc_lora_tiny_{tag}_seed14"}
    assert all(r["status"] == "ok" for r in records.values())
    assert records[f"unc_lora_tiny_{tag}_seed14"]["recipe"]["lr_encoder"] == chosen
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["machine"]["launcher"]["cluster"] == launcher and not suite["failed"]
    main_md = (tmp_path / "main.md").read_text()
    assert "| lora (selected on val) |" in main_md and "(n=2)" in main_md  # seeds 13 and 14: mean +- std


def test_launcher_problems_are_one_line(tiny_run_flags, tmp_path, capsys, monkeypatch):
    path, _ = _sweep_file(tmp_path, tiny_run_flags)
    base = ["suite", str(path), "--logs", str(tmp_path / "logs"), "--record", str(tmp_path / "suite.json")]
    assert main([*base, "--launcher", "slurm"]) == 2
    assert "needs --partition" in capsys.readouterr().err
    assert main([*base, "--partition", "gpu"]) == 2
    assert "go with --launcher" in capsys.readouterr().err
    assert main([*base, "--launcher", "slurm", "--partition", "gpu", "--time", "soon"]) == 2
    assert "--time 'soon'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun or sbatch here: not a SLURM machine, said in one line
    assert main([*base, "--launcher", "slurm", "--partition", "gpu"]) == 2
    assert "error: --launcher slurm: " in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    assert main([*base, "--launcher", "local"]) == 2
    assert "needs submitit, which is not installed" in capsys.readouterr().err
