"""`harness suite`: suite files, parallel execution with a fixed thread count, skip and resume, failures."""
import json

import pytest
import yaml

from harness.cli import main
from harness.errors import HarnessError
from harness.suites import expand, load_suite, suite_names


@pytest.fixture
def tiny_suite(tmp_path, tiny_run_flags):
    """A suite of tiny runs (conftest.tiny_run_flags) and a table of them."""
    def write(methods, name="s", out="rec"):
        flags = {**tiny_run_flags, "method": methods, "output": str(tmp_path / out),
                 "work_dir": str(tmp_path / "work" / out)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"description": "test", "jobs": [{"run": flags},
                                        {"table": {"runs": str(tmp_path / out), "out": str(tmp_path / "tables")}}]}))
        return path
    return write


def suite_args(path, tmp_path, *extra):
    return ["suite", str(path), "--logs", str(tmp_path / "logs"), "--record", str(tmp_path / "suite.json"), *extra]


@pytest.mark.parametrize("text, message", [
    ("jobs: [{train: {}}]", "unknown job 'train'"),
    ("jobs: [{run: {}, table: {}}]", "a job is one `command: {flags}` mapping"),
    ("jobs: []\nschedule: 3", "unknown key\\(s\\) schedule"),
    ("description: no jobs", "needs a `jobs:` list"),
    ("jobs: [{run: {output: '{where}'}}]", "\\{where\\} is not set"),
    ("jobs: [{run: [a, b]}]", "the flags of `run` must be a mapping"),
    ("jobs: [{run: 5}]", "the flags of `run` must be a mapping"),
])
def test_bad_suite_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=message):
        expand(load_suite(str(path)))


def test_a_job_flag_no_command_has_is_refused_before_any_job_runs(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"jobs": [{"table": {"out": str(tmp_path / "t")}},
                                             {"run": {"method": "frozen", "dataset": "unc", "bogus": 3}}]}))
    assert main(["suite", str(path), "--logs", str(tmp_path / "logs"), "--record", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "suite job 'run frozen_unc': harness: error: unrecognized arguments: --bogus 3" in err, err
    assert not (tmp_path / "t").exists() and not (tmp_path / "r.json").exists()  # the table job did not run


def test_named_suites_parse_and_unknown_names_are_refused(capsys):
    assert {"default", "all-datasets", "random-init", "transfer", "efficiency", "paper"} <= set(suite_names())
    for name in suite_names():
        variables = {"data_root": "/d", "weights": "/w"} if name == "paper" else {}
        assert expand(load_suite(name), variables)
    assert main(["suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_runs_then_skips_then_a_failure_does_not_stop_the_others(tiny_suite, tmp_path, capsys):
    path = tiny_suite(["frozen", "full"])
    assert main(suite_args(path, tmp_path)) == 0
    record = json.loads((tmp_path / "suite.json").read_text())
    assert record["kind"] == "suite" and record["wall_s"] > 0 and record["git"]["commit"]
    assert sorted(record["ran"]) == ["run frozen_unc", "run full_unc", "table"] and not record["failed"]
    assert (tmp_path / "rec" / "unc_full_tiny.json").is_file() and (tmp_path / "tables" / "main.md").is_file()
    assert main(suite_args(path, tmp_path)) == 0  # everything up to date
    record = json.loads((tmp_path / "suite.json").read_text())
    assert sorted(record["skipped"]) == ["run frozen_unc", "run full_unc"] and record["ran"] == ["table"]
    capsys.readouterr()
    broken = tiny_suite(["frozen", "nope", "lora"], name="broken", out="rec2")
    assert main(suite_args(broken, tmp_path)) == 2
    out, err = capsys.readouterr()
    record = json.loads((tmp_path / "suite.json").read_text())
    assert record["failed"] == ["run nope_unc"] and {"run frozen_unc", "run lora_unc"} <= set(record["ran"])
    assert "FAILED run nope_unc: error: unknown method 'nope'" in out and err.startswith("error: 1 of 4 jobs failed")


def test_a_run_alone_and_beside_another_gives_the_same_record(tiny_suite, tmp_path):
    alone = tiny_suite(["m2ist"], name="alone", out="alone")
    pair = tiny_suite(["m2ist", "lora"], name="pair", out="pair")
    assert main(suite_args(alone, tmp_path, "--workers", "1", "--threads", "1")) == 0
    assert main(suite_args(pair, tmp_path, "--workers", "2", "--threads", "1")) == 0
    a, b = (json.loads((tmp_path / d / "unc_m2ist_tiny.json").read_text()) for d in ("alone", "pair"))
    assert a["results"] == b["results"] and a["train"] == b["train"] and a["config_hash"] == b["config_hash"]
    assert a["env"]["device_name"] == b["env"]["device_name"] and "1 threads" in a["env"]["device_name"]


def test_each_job_is_reported_as_it_ends_and_recorded_in_suite_order(monkeypatch, tmp_path):
    """A phase of runs can take hours: its jobs are reported one by one, not when the whole phase ends."""
    import threading

    from harness import executor
    from harness.suites import Job

    slow_may_end = threading.Event()

    def run_job(job, log, threads, gpu=None):
        if job.name == "slow":
            assert slow_may_end.wait(10)  # ends only once the fast job has been reported
        return executor.Outcome(job.name, list(job.argv), "ok", 0.0, "", "")

    def log(line):
        lines.append(line)
        if "fast" in line:
            slow_may_end.set()

    lines = []
    monkeypatch.setattr(executor, "run_job", run_job)
    outcomes = executor.execute([Job("slow", ("run",)), Job("fast", ("run",))], tmp_path, workers=2, log=log)
    assert [line.split()[-1] for line in lines] == ["fast", "slow"]
    assert [o.job for o in outcomes] == ["slow", "fast"]


# ---- a stopped or killed suite: no orphans, no shared logs -------------------------------------------------------
def test_jobs_that_differ_only_in_unnamed_flags_get_their_own_logs(tmp_path):
    from harness.executor import log_paths
    from harness.suites import Job

    jobs = [Job("run frozen_unc", ("run", "--tag", "a")), Job("run frozen_unc", ("run", "--tag", "b")),
            Job("table", ("table",))]
    logs = log_paths(jobs, tmp_path)
    assert len(set(logs.values())) == 3 and logs[jobs[2]] == tmp_path / "table.log"
    assert all(logs[j].name.startswith("run_frozen_unc-") for j in jobs[:2])


def test_a_second_suite_on_the_same_log_folder_is_refused(tiny_suite, tmp_path, capsys):
    from harness.locks import FolderLock

    path = tiny_suite(["frozen"])
    with FolderLock(tmp_path / "logs", "suite.lock", str):  # another suite writing there
        assert main(suite_args(path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "writes its job logs in" in err and err.count("\n") == 1


def _slow_suite(tiny_suite, tmp_path):
    import os
    import subprocess
    import sys
    import time

    path = tiny_suite(["frozen"])
    text = path.read_text().replace("max_steps: 2", "max_steps: 100000").replace("epochs: 1", "epochs: 1000")
    path.write_text(text)
    suite = subprocess.Popen([sys.executable, "-m", "harness.cli", *suite_args(path, tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    run_dir = tmp_path / "work" / "rec" / "unc_frozen_tiny"
    deadline = time.time() + 120
    while not (run_dir / "last.pth").is_file() and time.time() < deadline:  # the job is in its epoch loop
        time.sleep(0.2)
    assert (run_dir / "last.pth").is_file(), suite.communicate()[0]
    return suite, int((run_dir / "run.lock").read_text())


def _ends(pid, seconds=60):
    import os
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of a dead parent counts as ended
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_to_a_suite_stops_its_jobs_and_writes_its_record(tiny_suite, tmp_path):
    import signal

    suite, job = _slow_suite(tiny_suite, tmp_path)
    suite.send_signal(signal.SIGTERM)
    out, _ = suite.communicate(timeout=120)
    assert suite.returncode == 2 and "suite stopped by SIGTERM" in out, out
    assert _ends(job, 10)
    record = json.loads((tmp_path / "suite.json").read_text())
    assert record["interrupted"] == ["run frozen_unc", "table"] and record["stopped_by"] == "SIGTERM"
    run = json.loads((tmp_path / "rec" / "unc_frozen_tiny.json").read_text())
    assert run["status"] == "interrupted"


def test_a_killed_suite_takes_its_jobs_with_it(tiny_suite, tmp_path):
    import os
    import signal

    suite, job = _slow_suite(tiny_suite, tmp_path)
    os.kill(suite.pid, signal.SIGKILL)
    suite.communicate(timeout=30)
    assert _ends(job), "the job outlived its suite"
    run = json.loads((tmp_path / "rec" / "unc_frozen_tiny.json").read_text())
    assert run["status"] == "interrupted"  # it got SIGTERM from the kernel and wrote its record


def test_an_unwritable_suite_record_is_found_before_any_job_runs(tiny_suite, tmp_path, capsys):
    path = tiny_suite(["frozen"])
    (tmp_path / "blocker").write_text("a file where the record's folder should be")
    argv = ["suite", str(path), "--logs", str(tmp_path / "logs"), "--record", str(tmp_path / "blocker" / "s.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and "choose another --record" in err and err.count("\n") == 1, err
    assert not (tmp_path / "rec").exists()  # no job ran
