"""How a suite's jobs are executed (the jobs themselves come from harness/suites.py).

Each job is one `harness` command in its own process, so a job's numbers never depend on what ran before it in
the same interpreter. On CPU, `workers` jobs run side by side, each with a fixed number of torch threads
(OMP_NUM_THREADS): a run's numbers depend on its thread count, never on how many jobs run beside it. With GPUs,
one job per device (CUDA_VISIBLE_DEVICES). Barrier jobs (tables, pretraining) wait for everything before them.
A failed job is reported and the others go on; the summary and a suite record (kind "suite") say what ran, what
was skipped (an up-to-date record) and what failed, with each job's log.
"""
from __future__ import annotations

import hashlib
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from harness.suites import Job

SKIPPED_MARK = re.compile(r": up to date \(.*\), skipped$", re.MULTILINE)  # what `harness run --skip-done` prints


@dataclass
class Outcome:
    job: str
    argv: list
    status: str  # ok | skipped | failed | interrupted (the suite was stopped: ended by its signal, or not started)
    seconds: float
    message: str  # the error line of a failed job
    log: str


def phases(jobs: list[Job]) -> list[list[Job]]:
    """Consecutive groups that may run in parallel: a barrier job is a group of its own."""
    out, current = [], []
    for job in jobs:
        if job.barrier:
            if current:
                out.append(current)
            out.append([job])
            current = []
        else:
            current.append(job)
    if current:
        out.append(current)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")


def log_paths(jobs: list[Job], log_dir: Path) -> dict[Job, Path]:
    """Each job's log: its name as a file name, and where two jobs would share one (they differ only in flags that
    do not name them, e.g. `tag:`), 8 hex digits of the command line after it, so no job truncates another's log."""
    names = [_slug(job.name) for job in jobs]
    clash = {n for n in names if names.count(n) > 1}
    paths = {}
    for job, name in zip(jobs, names):
        if name in clash:
            name += "-" + hashlib.sha256(" ".join(job.argv).encode()).hexdigest()[:8]
        paths[job] = log_dir / f"{name}.log"
    return paths


def _environment(threads: int | None, gpu: str | None = None) -> dict:
    """What a job's environment adds to the one it starts in (on a cluster node: the node's, SLURM's included)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# The jobs running now, so that a signal to the suite reaches them (forward_signals), and the signal that stops it.
_RUNNING: set = set()
_STOPPED: list = []
PARENT_ENV = "REC_BENCH_SUITE_PID"  # a job dies with the suite that started it (harness.cli._stop_on_sigterm)


def run_command(argv: list, log: str, extra_env: dict | None = None, nproc: int = 1) -> int:
    """One harness command, output into `log`; `nproc` > 1 runs it under torchrun (DDP, one process per GPU). Also
    what a submitit job executes on its node."""
    command = [sys.executable, "-m", "harness.cli", *argv]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "harness.cli", *argv]
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write(f"$ harness {' '.join(argv)}\n")
        out.flush()
        env = {**os.environ, **(extra_env or {}), PARENT_ENV: str(os.getpid())}
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _RUNNING.add(proc)
        try:
            return proc.wait()
        finally:
            _RUNNING.discard(proc)


@contextmanager
def forward_signals():
    """SIGINT / SIGTERM to the suite go on to its running jobs (each writes its interrupted record and ends), no new
    job starts, and the suite still writes its record; the signal is kept in _STOPPED. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOPPED.clear()

    def stop(signum, _frame):
        _STOPPED.append(signal.Signals(signum).name)
        for proc in list(_RUNNING):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _outcome(job: Job, returncode: int, seconds: float, log: Path, message: str = "") -> Outcome:
    text = log.read_text(errors="replace") if log.is_file() else ""
    if returncode != 0:
        lines = [line for line in text.splitlines() if line.startswith("error:")] or text.splitlines()[-1:]
        message = message or (lines or [f"exit {returncode}"])[-1]
        status = "interrupted" if _STOPPED else "failed"
        return Outcome(job.name, list(job.argv), status, seconds, message, str(log))
    status = "skipped" if SKIPPED_MARK.search(text) else "ok"
    return Outcome(job.name, list(job.argv), status, seconds, "", str(log))


def run_job(job: Job, log: Path, threads: int, gpu: str | None = None) -> Outcome:
    t0 = time.perf_counter()
    returncode = run_command(list(job.argv), str(log), _environment(threads, gpu))
    return _outcome(job, returncode, time.perf_counter() - t0, log)


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class Submitit:
    """Runs and profiles as submitit jobs (`--launcher slurm`, or `local` / `debug`: submitit's own executors, for
    a machine without SLURM), one job each, all of a phase submitted at once; barrier jobs (tables, pretraining,
    selection, floors) stay on this machine. Each job writes its own record atomically, as locally."""

    def __init__(self, cluster: str, folder, partition: str | None = None, gpus_per_job: int = 0,
                 time_min: int | None = None, threads: int | None = None):
        from harness.errors import HarnessError

        try:
            import submitit
        except ImportError:
            raise HarnessError("--launcher needs submitit, which is not installed: pip install submitit") from None
        if cluster == "slurm" and not partition:
            raise HarnessError("--launcher slurm needs --partition P (the SLURM partition to submit to)")
        self.cluster, self.gpus, self.threads = cluster, gpus_per_job, threads
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        except Exception as err:  # e.g. no srun on this machine: not a SLURM login node
            raise HarnessError(f"--launcher {cluster}: {_first_line(err)}") from None
        params = {"timeout_min": time_min, "gpus_per_node": gpus_per_job or None, "nodes": 1, "tasks_per_node": 1,
                  "name": "rec-petl-bench"}
        if cluster == "slurm":
            params["slurm_partition"] = partition
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def run(self, phase: list[Job], logs: list[Path]) -> list[Outcome]:
        from harness.errors import HarnessError

        nprocs = [self.gpus if job.argv[0] == "run" and self.gpus > 1 else 1 for job in phase]
        t0 = time.perf_counter()
        try:
            handles = [self.executor.submit(run_command, list(job.argv), str(log.resolve()),
                                            _environment(self.threads), nproc)
                       for job, log, nproc in zip(phase, logs, nprocs)]
        except Exception as err:  # sbatch missing or refusing: say so in one line
            raise HarnessError(f"--launcher {self.cluster}: submitting failed: {_first_line(err)}") from None
        outcomes = []
        for job, log, handle in zip(phase, logs, handles):
            try:
                returncode, message = handle.result(), ""
            except Exception as err:  # the job died (timeout, node failure, preemption): submitit's reason
                returncode = 1
                message = f"submitit job {handle.job_id}: {_first_line(err)}"
            outcomes.append(_outcome(job, returncode, time.perf_counter() - t0, log, message))
        return outcomes


def say(message: str) -> None:
    print(message, flush=True)  # seen as it happens when the suite's output goes to a file (nohup, sbatch)


def execute(jobs: list[Job], log_dir, workers: int = 2, threads: int = 1, gpus: list[str] | None = None,
            log=say, launcher: Submitit | None = None) -> list[Outcome]:
    """Every job, phase by phase; within a phase up to `workers` at once (one per GPU when `gpus` is given), or
    all of it submitted through `launcher`."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = log_paths(jobs, log_dir)
    outcomes, done = [], 0
    free = queue.Queue()
    for gpu in gpus or []:
        free.put(gpu)
    width = len(gpus) if gpus else workers

    def one(job: Job) -> Outcome:
        if _STOPPED:  # the suite was told to stop: start nothing more
            return Outcome(job.name, list(job.argv), "interrupted", 0.0, f"not started ({_STOPPED[0]})", "")
        gpu = free.get() if gpus else None
        try:
            return run_job(job, logs[job], threads, gpu)
        finally:
            if gpus:
                free.put(gpu)

    def report(outcome: Outcome) -> None:  # as each job ends: a phase of runs can take hours
        nonlocal done
        done += 1
        note = f" ({outcome.message})" if outcome.message else ""
        log(f"[{done}/{len(jobs)}] {outcome.status:<7} {outcome.seconds:7.1f} s  {outcome.job}{note}")

    for phase in phases(jobs):
        if _STOPPED:
            results = [one(job) for job in phase]
        elif launcher is not None and not phase[0].barrier:
            results = launcher.run(phase, [logs[job] for job in phase])
            for outcome in results:
                report(outcome)
        else:
            with ThreadPoolExecutor(max_workers=max(1, min(width, len(phase)))) as pool:
                futures = [pool.submit(one, job) for job in phase]
                for future in as_completed(futures):
                    report(future.result())
                results = [f.result() for f in futures]
        outcomes += results  # in the suite's order, whatever order they ended in
    return outcomes


def summary(name: str, outcomes: list[Outcome], wall_s: float) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed", "interrupted")}
    lines = [f"suite {name}: {counts['ok']} ran, {counts['skipped']} skipped (up to date), {counts['failed']} failed "
             + (f"({counts['interrupted']} interrupted by {_STOPPED[0]}) " if _STOPPED else "")
             + f"in {wall_s:.0f} s ({wall_s / 60:.1f} min)"]
    lines += [f"  FAILED {o.job}: {o.message} (log: {o.log})" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)


def suite_record(name: str, path: str, outcomes: list[Outcome], wall_s: float, workers: int, threads: int,
                 gpus) -> dict:
    from harness import records

    return {"schema": records.SCHEMA_VERSION, "kind": "suite", "suite": name, "suite_file": records.portable(path),
            "wall_s": wall_s,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "workers": workers,
                        "torch_threads_per_job": threads, "gpus": gpus or []},
            "git": records.git_state(), "created_at": records.now(),
            "ran": [o.job for o in outcomes if o.status == "ok"],
            "skipped": [o.job for o in outcomes if o.status == "skipped"],
            "failed": [o.job for o in outcomes if o.status == "failed"],
            "interrupted": [o.job for o in outcomes if o.status == "interrupted"], "stopped_by": _STOPPED[0] if _STOPPED
            else None,
            "jobs": [asdict(o) for o in outcomes]}


def run_suite(name: str, variables: dict | None = None, workers: int | None = None, threads: int | None = None,
              gpus: list[str] | None = None, force: bool = False, dry_run: bool = False, logs=None, record=None,
              seeds: list[int] | None = None, log=say, launcher: dict | None = None, check=None) -> dict | None:
    """`harness suite NAME`: expand, execute, summarise, write the suite record; HarnessError if a job failed.
    `check(argv)`: refuses a job's command line before anything runs (the CLI's parser: a flag no command has)."""
    from harness.errors import HarnessError
    from harness.locks import FolderLock
    from datasets.files import check_writable
    from harness.records import write_json_atomic
    from harness.suites import expand, load_suite

    suite = load_suite(name)
    jobs = expand(suite, variables, seeds=seeds)
    if force:  # redo what is up to date: no skipping, and finished checkpoints are discarded, saying so
        jobs = [replace(j, argv=tuple(a for a in j.argv if a != "--skip-done")
                        + (("--restart",) if j.argv[0] == "run" else ())) for j in jobs]
    for job in jobs if check else []:
        check(list(job.argv), job.name)
    if dry_run:
        for job in jobs:
            log(("-- barrier -- " if job.barrier else "") + "harness " + " ".join(job.argv))
        return None
    name = Path(suite["path"]).stem
    logs = Path(logs or f"runs/suite-logs/{name}")
    record = Path(record or f"results/suites/{name}.json")
    for folder, flag in ((record.parent, "--record"), (logs, "--logs")):  # found now, not after hours of jobs
        check_writable(folder, f"choose another {flag}")
    if launcher:  # runs and profiles go to submitit; the job's allocation decides their threads unless --threads
        submit = Submitit(folder=launcher.get("folder") or logs / "submitit", threads=threads,
                          **{k: v for k, v in launcher.items() if k != "folder"})
        workers = 1
        log(f"suite {name}: {len(jobs)} jobs, runs and profiles through submitit ({launcher['cluster']}); "
            f"logs in {logs}/")
    else:
        submit = None
        workers = workers or (len(gpus) if gpus else 2)
        threads = threads or max(1, (os.cpu_count() or 2) // workers)
        if workers < 1 or threads < 1:
            raise HarnessError(f"--workers and --threads must be >= 1 (got {workers}, {threads})")
        log(f"suite {name}: {len(jobs)} jobs, {workers} at a time, {threads} torch thread(s) each"
            + (f", GPUs {','.join(gpus)}" if gpus else "") + f"; logs in {logs}/")
    start = time.perf_counter()
    busy = (lambda pid: f"another suite (pid {pid}) writes its job logs in {logs}/: wait for it to end, or give this "
            "one another --logs folder")
    # one suite per log folder (two truncated each other's logs); signals go on to the running jobs
    with FolderLock(logs, "suite.lock", busy), forward_signals():
        outcomes = execute(jobs, logs, workers=workers, threads=threads, gpus=gpus, log=log, launcher=submit)
        wall = time.perf_counter() - start
        result = suite_record(name, suite["path"], outcomes, wall, workers, threads, gpus)
        if launcher:
            result["machine"]["launcher"] = {k: str(v) for k, v in launcher.items()}
        path = write_json_atomic(record, result)
    log(summary(name, outcomes, wall) + f"\nsuite record: {path}")
    if result["interrupted"]:
        raise HarnessError(f"suite stopped by {_STOPPED[0]}: {len(result['interrupted'])} of {len(jobs)} jobs "
                           "interrupted; rerun the same command to resume them")
    if result["failed"]:
        raise HarnessError(f"{len(result['failed'])} of {len(jobs)} jobs failed (listed above)")
    return result
