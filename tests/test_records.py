"""A record's git state: the commit, and whether the code (not results/, which the code writes) was edited."""
import shutil
import subprocess

import pytest

from harness.records import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def test_rewritten_results_leave_the_code_clean_but_edited_code_is_dirty(tmp_path, monkeypatch):
    monkeypatch.delenv("REC_BENCH_GIT_COMMIT", raising=False)

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "main.md").write_text("old table\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    (tmp_path / "results" / "main.md").write_text("new table\n")
    (tmp_path / "results" / "new_record.json").write_text("{}\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}

    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
