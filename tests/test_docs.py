"""The README and docs/ name only commands and flags that exist: every `harness ...` and `./run_all.sh ...` command
in their code blocks and inline code is checked against the real parsers (harness.cli.build_parser, run_all.sh's
option list)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from harness.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = ["README.md" if p.parent == ROOT else f"docs/{p.name}" for p in PAGES]


def commands(text: str) -> list[str]:
    """Command lines from fenced blocks (continuations joined) and inline code spans."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines += [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", prose)
    found = []
    for line in lines:
        for part in re.split(r"&&|;|\|", line):  # one command each
            part = " ".join(part.split())
            if re.match(r"(harness |\./run_all\.sh|torchrun )", part) or part in ("harness", "./run_all.sh"):
                found.append(part)
    return found


def _subparsers(parser: argparse.ArgumentParser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def check_harness(tokens: list[str]) -> list[str]:
    """The problems of one `harness` command line: an unknown subcommand or flag."""
    parser, path = build_parser(), ["harness"]
    for tok in tokens:
        sub = _subparsers(parser)
        if sub is None or tok.startswith("-"):
            break
        if tok not in sub.choices:
            return [f"`{' '.join(path)}` has no subcommand {tok!r}"]
        parser, path = sub.choices[tok], path + [tok]
    known = set(parser._option_string_actions)
    return [f"`{' '.join(path)}` has no flag {flag}" for flag in
            (t.split("=")[0] for t in tokens if t.startswith("--") and t != "--") if flag not in known]


def run_all_flags() -> set[str]:
    script = (ROOT / "run_all.sh").read_text()
    return {f for pattern in re.findall(r"^\s*((?:--?[\w-]+\|?)+)\)", script, flags=re.M) for f in pattern.split("|")}


def problems(line: str) -> list[str]:
    tokens = line.replace("[", " ").replace("]", " ").split()
    if tokens[0] == "harness":
        return check_harness(tokens[1:])
    if tokens[0] == "torchrun":  # torchrun ... -m harness.cli <command>
        return check_harness(tokens[tokens.index("harness.cli") + 1:]) if "harness.cli" in tokens else []
    ours, theirs = (tokens[1:tokens.index("--")], tokens[tokens.index("--") + 1:]) if "--" in tokens else (tokens[1:], [])
    bad = [f"./run_all.sh has no flag {t}" for t in ours if t.startswith("-") and t not in run_all_flags()]
    return bad + (check_harness(["suite", *theirs]) if theirs else [])


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_command_in_the_docs_exists(page):
    found = commands(page.read_text())
    bad = [f"{line}: {why}" for line in found for why in problems(line)]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_made_up_flag_and_subcommand():
    assert problems("harness run --method m2ist --warp 9") == ["`harness run` has no flag --warp"]
    assert problems("harness frobnicate") == ["`harness` has no subcommand 'frobnicate'"]
    assert problems("./run_all.sh --turbo") == ["./run_all.sh has no flag --turbo"]
    assert problems("./run_all.sh --sweep -- --workers 1") == []
    assert commands("text `harness table --runs X` and\n```bash\nharness fetch data \\\n  --root D\n```\n") == \
        ["harness fetch data --root D", "harness table --runs X"]


def test_the_readme_stays_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"docs/{page.name}" in readme, page.name
