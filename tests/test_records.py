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


def test_records_name_paths_relative_to_the_repository_or_the_cache(tmp_path, monkeypatch):
    from harness.records import REPO, portable, portable_text

    monkeypatch.setenv("REC_BENCH_CACHE", str(tmp_path / "cache"))
    assert portable(REPO / "results" / "runs") == "results/runs"
    assert portable(tmp_path / "cache" / "pretrained" / "x" / "vision.pth") == "$REC_BENCH_CACHE/pretrained/x/vision.pth"
    assert portable("/data/refer/detr-r50-unc.pth") == ".../detr-r50-unc.pth"  # what it is, not where
    assert portable("weights/bert") == "weights/bert" and portable(None) is None
    assert portable_text(f"vision weights from {tmp_path}/cache/p/v.pth: 1 key") == \
        "vision weights from $REC_BENCH_CACHE/p/v.pth: 1 key"
