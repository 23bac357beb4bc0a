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


def test_old_records_get_portable_paths_and_keep_their_numbers(tmp_path):
    import importlib.util
    import json

    from harness.records import REPO

    spec = importlib.util.spec_from_file_location("portable_records", REPO / "scripts" / "portable_records.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    record = {"kind": "run", "weights": {"vision": "/tmp/cache15/pretrained/tiny-seed13-abc/vision.pth",
                                         "language": "/root/.cache/rec-petl-bench/pretrained/tiny-seed13-abc/bert",
                                         "loaded": ["vision weights from /tmp/cache15/pretrained/k/vision.pth: 1 key"]},
              "data_desc": {"root": "/data/mine/refcoco"}, "results": {"val": {"accuracy": 0.5, "miou": 0.4, "n": 2}}}
    new = script.rewrite(json.loads(json.dumps(record)))
    assert new["weights"]["vision"] == "$REC_BENCH_CACHE/pretrained/tiny-seed13-abc/vision.pth"
    assert new["weights"]["language"] == "$REC_BENCH_CACHE/pretrained/tiny-seed13-abc/bert"
    assert new["weights"]["loaded"] == ["vision weights from $REC_BENCH_CACHE/pretrained/k/vision.pth: 1 key"]
    assert new["data_desc"]["root"] == ".../refcoco" and new["results"] == record["results"]
    assert script.rewrite(json.loads(json.dumps(new))) == new  # idempotent
    assert script.rewrite({"kind": "suite", "suite_file": "/tmp/wt15/suites/sweep.yaml"})["suite_file"] == \
        "suites/sweep.yaml"
