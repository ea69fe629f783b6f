"""Stress the service as a hostile user would, bounded in time, and count what went wrong.

    python -m benchmarks.stress [--workers 4] [--trials 24] [--chaos-s 90] [--backends sqlite postgresql]
        [--scale 0.1] [--epochs 4] [--full-disk-epochs 12] [--scenarios storm full-disk oom]
        [--oom-limit-mb 3072] [--oom-max-starts 8]

For each backend (a SQLite file; a fresh PostgreSQL database), N ``search.run`` workers start at the same
moment on one new study, with ``search.dashboard`` serving it and a client polling the dashboard's API.
For ``--chaos-s`` seconds workers are SIGKILLed at random moments (and replaced), and so are the feature
cache's fill processes. Then workers are started until the study has its trials. Last, a full disk: a worker
whose trial folders sit on a small tmpfs (root only; else a simulated ENOSPC) must stop with one line, its
trial re-queued, and a worker started after space is freed must finish it from its last epoch; the same with only
the artifact store (``--artifacts``) on the small disk. Then out of memory on the CPU: a trial asking for tens of
GB after a baseline that fits, once under a capped address space (``prlimit --as``: torch's allocation fails)
and once in a memory cgroup (the kernel's OOM killer SIGKILLs the worker), workers restarted one after another as
a user would restart a dead pane (those two, full disk and out of memory: benchmarks/stress_limits.py).

Prints: trials finished vs asked, duplicates, trials left RUNNING, lock errors, worker exits other than 0
(and the SIGKILLs it sent), unloadable checkpoints, temp files left, orphan processes, lost trained epochs,
dashboard errors. Not a test: it takes minutes; its fast cousins are in tests/search/test_lifecycle.py,
test_run.py and test_storage.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from benchmarks.harness import REPO, Fleet, children_of, processes_with_environment, search_run, with_study, write_spec
from benchmarks.stress_limits import full_disk, out_of_memory
from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.record import load_study
from trainer import CheckpointError, ensure_demo_data, load_checkpoint

SPEC = {
    "study": {"data": "demo", "data_scale": 0.1, "epochs": 4},
    "base": {"model.depth": 18, "model.width": 0.0625, "features.n_mels": 32, "features.crop_frames": 64,
             "optim.batch_size": 16, "optim.lr": 3e-3},
    "sampler": {"name": "random", "seed": 0},
    "startup": {"near_baseline": 2},
    "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2, "min_trials": 2},
    "space": {"optim.lr": {"float": [1e-4, 1e-2], "log": True},
              "features.n_mels": {"choices": [24, 32, 40, 48]},
              "features.hop": {"choices": [220, 256, 320]},  # 12 feature settings: many cache fills to kill
              "model.head": {"choices": ["linear", "mlp"]},
              "model.head_hidden": {"int": [8, 32], "when": {"model.head": "mlp"}}},
}
PG = "postgresql://postgres@127.0.0.1:5432"
HUNG_AFTER_S = 300.0  # a storm worker still running this long after the chaos waits for something that never comes
MARKER = "FAT2019_STRESS"  # in the environment of this run's workers and their fill processes


def sized(spec: dict, args: argparse.Namespace, epochs: int | None = None) -> dict:
    """``spec`` at ``--scale`` of the demo set and ``epochs`` (default ``--epochs``) per trial."""
    return with_study(spec, data_scale=args.scale, epochs=args.epochs if epochs is None else epochs)


def storm_worker(studies: Path, name: str, url: str, trials: int) -> list[str]:
    return search_run(name, studies, "--storage", url, "--trials", trials, "--threads", 1, "--heartbeat", 1,
                      "--grace", 3)


def kill_one(fleet: Fleet, rng: random.Random) -> int:
    """SIGKILL one live worker of ``fleet`` at random; the number killed (0 or 1)."""
    alive = fleet.alive()
    if alive:
        rng.choice(alive).send_signal(signal.SIGKILL)
    return len(alive[:1])


class FillKiller:
    """Every 50 ms, looks for the workers' child processes (feature-cache fill processes, alive for a second or
    two) and SIGKILLs each one it has not seen before with probability ``p``: the chaos loop's 1-4 s pace
    would almost never catch one."""

    def __init__(self, fleet: "Fleet", rng: random.Random, p: float = 0.5) -> None:
        self.fleet, self.rng, self.p = fleet, rng, p
        self.kills, self.seen = 0, set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.is_set():
            for pid in children_of({p.pid for p in self.fleet.alive()}):
                if pid not in self.seen:
                    self.seen.add(pid)
                    if self.rng.random() < self.p:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            self.kills += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


class DashboardPoller:
    """``search.dashboard`` on the study, and a thread that asks its API for the study every 0.3 s."""

    def __init__(self, name: str, url: str, studies: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "search.dashboard", "--study", name, "--storage", url,
                                      "--studies-dir", str(studies), "--port", "0"], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.address = ""
        for line in self.proc.stdout:
            if "open: " in line:
                self.address = line.split("open: ", 1)[1].strip()
            if "stop: " in line:
                break
        base, study_id = self.address.split("/dashboard/studies/")
        self.api = f"{base}/api/studies/{study_id}?after=0"
        self.polls, self.errors = 0, []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.is_set():
            try:
                with urllib.request.urlopen(self.api, timeout=30) as response:
                    json.load(response)
                self.polls += 1
            except Exception as exc:  # every failure is a finding to report
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(60)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def audit(studies: Path, name: str, url: str, trials: int) -> dict:
    """What the storage and the files say after the run."""
    handle = load_study(name, url, studies)
    all_trials = handle.study.get_trials(deepcopy=False)
    finished = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    roots = Counter(t.system_attrs.get("failed_trial", t.number) for t in finished)
    by_number = {t.number: t for t in all_trials}
    lost = 0
    for trial in all_trials:
        before = trial.user_attrs.get("retry_of")
        if before is None or trial.state == TrialState.WAITING:
            continue
        reported = max(by_number[before].intermediate_values, default=0)
        # a retry must start after its predecessor's last reported epoch (reported = checkpoint handed over),
        # unless that checkpoint was unloadable and the note says so
        if int(trial.user_attrs.get("resumed_from_epoch", 0)) < reported and "resume_note" not in trial.user_attrs:
            lost += reported - int(trial.user_attrs.get("resumed_from_epoch", 0))
    store = open_artifact_store(studies / name / "artifacts")
    files = TrialFiles(store, handle.uid())
    unloadable = 0
    checked = 0
    for path in list((studies / name).rglob("*.pth")):
        checked += 1
        try:
            load_checkpoint(path)
        except CheckpointError:
            unloadable += 1
    return {"asked": trials, "finished": len(finished), "duplicates": sum(n - 1 for n in roots.values() if n > 1),
            "running": sum(t.state == TrialState.RUNNING for t in all_trials),
            "failed": sum(t.state == TrialState.FAIL for t in all_trials), "lost_epochs": lost,
            # failed attempts nobody queued again: dropped after --max-retry fruitless attempts
            "dropped": sum(t.state == TrialState.FAIL and not any(o.user_attrs.get("retry_of") == t.number
                                                                 for o in all_trials) for t in all_trials),
            "checkpoints_checked": checked, "unloadable": unloadable,
            "stored_bytes": files.disk_bytes()}


def storm(backend: str, args: argparse.Namespace, root: Path) -> dict:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, "FAT2019_SEARCH_CACHE": str(root / "cache"),
           "PYTHONUNBUFFERED": "1"}
    studies = root / backend
    studies.mkdir(parents=True)
    name = f"stress-{backend}"
    write_spec(studies / f"{name}.toml", sized(SPEC, args))
    database = None
    if backend == "sqlite":
        url = f"sqlite:///{studies / (name + '.db')}"
    else:
        database = f"stress_{marker[:8]}"
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc",
                        f"CREATE DATABASE {database}"], check=True)
        url = f"{PG}/{database}"
    rng = random.Random(args.seed)
    fleet = Fleet(storm_worker(studies, name, url, args.trials), studies / "logs", env=env)
    kills = 0
    started = time.monotonic()
    for _ in range(args.workers):  # all at once: the schema and the study are created in a race
        fleet.start()
    while not (studies / (name + ".db")).exists() and backend == "sqlite" and time.monotonic() - started < 60:
        time.sleep(0.2)
    time.sleep(5)
    dashboard = DashboardPoller(name, url, studies, env)
    fill_killer = FillKiller(fleet, random.Random(args.seed + 1))
    deadline = time.monotonic() + args.chaos_s
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 4.0))
        kills += kill_one(fleet, rng)
        fleet.start()
    fill_killer.stop()
    fleet.wait(HUNG_AFTER_S)
    for _ in range(10):  # then workers without chaos until the study has its trials
        handle = load_study(name, url, studies)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in handle.study.get_trials())
        if done >= args.trials:
            break
        time.sleep(4)  # the heartbeat grace, so dead workers' trials are failed and re-queued
        for _ in range(2):
            fleet.start()
        fleet.wait(HUNG_AFTER_S)
    dashboard.stop()
    elapsed = time.monotonic() - started
    time.sleep(1)
    result = audit(studies, name, url, args.trials)
    text = fleet.log_text()
    result.update({
        "backend": backend, "seconds": round(elapsed), "worker_kills": kills, "fill_kills": fill_killer.kills,
        "worker_exits_not_0": [p.returncode for p in fleet.procs if p.returncode not in (0, -signal.SIGKILL)],
        "lock_errors": text.count("database is locked"), "tracebacks": text.count("Traceback"),
        "temp_files_left": len(list(studies.rglob(".tmp-*"))),
        "orphans": len(processes_with_environment(f"{MARKER}={marker}")), "hung_workers": fleet.hung,
        "dashboard_polls": dashboard.polls, "dashboard_errors": len(dashboard.errors),
    })
    if args.keep_logs:
        Path(args.keep_logs, f"storm-{backend}.log").write_text(text, encoding="utf-8")
    if database is not None:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc",
                        f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], check=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--chaos-s", type=float, default=90.0)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=0.1, help="size of the demo set the trials train on")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial of the storm")
    parser.add_argument("--full-disk-epochs", type=int, default=12, help="epochs of the full-disk scenario's trial")
    parser.add_argument("--oom-limit-mb", type=int, default=3072,
                        help="memory a worker of the out-of-memory scenarios may have")
    parser.add_argument("--oom-max-starts", type=int, default=8,
                        help="workers the out-of-memory scenarios start, one after another, at most")
    parser.add_argument("--keep-logs", help="a folder to keep the workers' output in (storm, full disk)")
    parser.add_argument("--scenarios", nargs="+", default=["storm", "full-disk", "oom"],
                        choices=["storm", "full-disk", "oom"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fat2019-stress-"))
    os.environ["FAT2019_SEARCH_CACHE"] = str(root / "cache")
    ensure_demo_data(scale=args.scale)
    results = []
    for backend in args.backends if "storm" in args.scenarios else ():  # each printed as it comes
        results.append(storm(backend, args, root))
        print(json.dumps(results[-1], indent=1), flush=True)
    if "full-disk" in args.scenarios:
        for artifacts_only in (False, True):
            spec = sized(SPEC, args, args.full_disk_epochs)
            print(json.dumps(full_disk(args, root, spec, artifacts_only=artifacts_only), indent=1), flush=True)
    if "oom" in args.scenarios:
        for killer in ("allocation", "oom-killer"):
            print(json.dumps(out_of_memory(args, root, sized(SPEC, args), killer=killer), indent=1), flush=True)
    print()
    if not results:
        shutil.rmtree(root, ignore_errors=True)
        return
    print("| check | " + " | ".join(r["backend"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    rows = [("trials finished / asked", lambda r: f"{r['finished']} / {r['asked']}"),
            ("workers SIGKILLed / fill processes SIGKILLed", lambda r: f"{r['worker_kills']} / {r['fill_kills']}"),
            ("worker exits other than 0 or SIGKILL", lambda r: len(r["worker_exits_not_0"])),
            ("tracebacks in worker output", lambda r: r["tracebacks"]),
            ("duplicates (a trial finished twice)", lambda r: r["duplicates"]),
            ("trials left RUNNING", lambda r: r["running"]),
            ("trials dropped (--max-retry fruitless attempts)", lambda r: r["dropped"]),
            ("lost trained epochs", lambda r: r["lost_epochs"]),
            ("lock errors", lambda r: r["lock_errors"]),
            ("unloadable checkpoints (of checked)", lambda r: f"{r['unloadable']} ({r['checkpoints_checked']})"),
            ("temp files left", lambda r: r["temp_files_left"]),
            ("orphan processes", lambda r: r["orphans"]),
            (f"workers hung (still waiting {HUNG_AFTER_S:.0f} s after the chaos; killed)",
             lambda r: r.get("hung_workers", "-")),
            ("dashboard polls / errors", lambda r: f"{r['dashboard_polls']} / {r['dashboard_errors']}"),
            ("wall time", lambda r: f"{r['seconds']} s")]
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(str(cell(r)) for r in results) + " |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
