"""What jobs a suite has: `suites/<name>.yaml` -> an ordered list of jobs, each one `harness` command.

A suite file:

    description: one line for `harness suite --list`
    jobs:
      - pretrain: {preset: tiny}                  # any harness subcommand: run, profile, table, pretrain, data
      - run: {method: all, dataset: [unc], preset: tiny, device: cpu}
      - profile: {method: all, preset: tiny, device: cpu}
      - table: {}

A job is a mapping of one subcommand to its flags (`key: value` -> `--key value`, `true` -> `--key`, a list in
`method` / `dataset` / `seed` expands to one job per value, `method: all` to every registered method). A run job's
`grid: {OPTION: [values]}` expands to one job per value with `--set OPTION=value`; a grid over `lr_encoder` gives a
method without encoder-side parameters (frozen) one job without it, as it has nothing to tune. `{var}` in a value
is filled from the suite's `vars:` and the command line's `--var KEY=VALUE` (a comma-separated VALUE is a list).
`table`, `pretrain`, `data` and `select` jobs are barriers: every job before them finishes first. The executor
(harness/executor.py) decides how the jobs run.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.errors import HarnessError
from harness.options import yaml_value

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
COMMANDS = ("run", "profile", "table", "pretrain", "data", "select")
BARRIERS = ("table", "pretrain", "data", "select")
EXPANDED = ("method", "dataset", "seed")


@dataclass(frozen=True)
class Job:
    name: str  # a readable id: command and the values it was expanded over
    argv: tuple[str, ...]  # the harness command line
    barrier: bool = False  # every earlier job must end before it starts


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise HarnessError(f"unknown suite {name!r}: choose one of {', '.join(suite_names())} (suites/*.yaml) or "
                           "pass a suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HarnessError(f"suite file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise HarnessError(f"suite file {path}: needs a `jobs:` list (see harness/suites.py)")
    unknown = sorted(set(data) - {"description", "vars", "jobs"})
    if unknown:
        raise HarnessError(f"suite file {path}: unknown key(s) {', '.join(unknown)}; known: description, vars, jobs")
    data["path"] = str(path)
    return data


def _flag(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, list):
        return [part for v in value for part in (flag, str(v))]  # a repeatable flag (--set)
    return [flag, str(value)]


def expand(suite: dict, variables: dict | None = None, methods: list[str] | None = None,
           seeds: list[int] | None = None) -> list[Job]:
    """The suite's jobs with lists and `all` expanded and `{var}` filled in, in file order; with `seeds`, every run
    job once per seed."""
    from methods import method_names

    variables = {**(suite.get("vars") or {}), **(variables or {})}
    all_methods = methods or method_names()
    jobs = []
    for i, entry in enumerate(suite["jobs"]):
        where = f"suite file {suite['path']} job {i + 1}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise HarnessError(f"{where}: a job is one `command: {{flags}}` mapping, got {entry!r}")
        (command, flags), = entry.items()
        if command not in COMMANDS:
            raise HarnessError(f"{where}: unknown job {command!r}; known: {', '.join(COMMANDS)}")
        if flags is not None and not isinstance(flags, dict):
            raise HarnessError(f"{where}: the flags of `{command}` must be a mapping of flag: value, got {flags!r}")
        flags = dict(flags or {})
        if not all(isinstance(k, str) for k in flags):
            raise HarnessError(f"{where}: flag names must be strings")
        try:
            flags = {k: _fill(v, variables) for k, v in flags.items()}
        except KeyError as err:
            raise HarnessError(f"{where}: {{{err.args[0]}}} is not set: add it to the suite's vars: or pass "
                               f"--var {err.args[0]}=VALUE") from None
        axes = []
        for key in EXPANDED:
            value = flags.pop(key, None)
            if value == "all" and key == "method":
                value = all_methods
            axes.append([(key, v) for v in (value if isinstance(value, list) else [value])] if value is not None
                        else [None])
        if seeds and command == "run":
            axes[EXPANDED.index("seed")] = [("seed", v) for v in seeds]
        grid = _grid(flags.pop("grid", None), command, where)
        base_set = _as_list(flags.pop("set", None))
        subcommand = flags.pop("subcommand", None)  # `data` jobs: data synth / data prepare ...
        for *combo, point in itertools.product(*axes, grid):
            picked = dict(c for c in combo if c)
            label = "_".join(str(v) for v in picked.values())
            sets = base_set
            if point and (point[0] != "lr_encoder" or tunes_encoder_side(picked.get("method"))):
                sets = [*base_set, f"{point[0]}={yaml_value(point[1])}"]
                label += f"_{sets[-1]}"
            elif point and point != grid[0]:
                continue  # nothing to tune: one job, without the override
            argv = [command] + ([str(subcommand)] if subcommand else [])
            for key, value in {**picked, **flags, "set": sets or None}.items():
                argv += _flag(key, value)
            jobs.append(Job(name=f"{command}{' ' + label if label else ''}", argv=tuple(argv),
                            barrier=command in BARRIERS))
    return jobs


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _grid(grid, command: str, where: str) -> list:
    """[(option, value), ...] of a run job's `grid:`, or [None] (one job) without one."""
    if grid is None:
        return [None]
    if command != "run" or not isinstance(grid, dict) or len(grid) != 1:
        raise HarnessError(f"{where}: `grid:` belongs to a run job and is one {{OPTION: [values]}} mapping")
    (option, values), = grid.items()
    values = _as_list(values)
    if not values:
        raise HarnessError(f"{where}: grid {option} has no values")
    return [(option, v) for v in values]


def tunes_encoder_side(method: str | None) -> bool:
    from methods import method_class

    return method is None or method_class(method).tunes_encoder_side


def _fill(value, variables: dict):
    if isinstance(value, str):
        whole = re.fullmatch(r"\{(\w+)\}", value)
        return variables[whole.group(1)] if whole else value.format_map(variables)  # "{x}" keeps x's type (null)
    if isinstance(value, list):
        return [_fill(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, variables) for k, v in value.items()}
    return value
