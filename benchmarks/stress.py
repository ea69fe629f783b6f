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
a user would restart a dead pane.

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

import optuna
from optuna.trial import TrialState

from benchmarks.harness import (REPO, Fleet, children_of, processes_with_environment, search_run, with_study,
                                write_spec)
from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.storage import open_storage
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


@contextlib.contextmanager
def small_tmpfs(root: Path, name: str, size: str = "40m"):
    """A ``size`` tmpfs at ``root/name``, or None where mounting is not permitted (not root)."""
    mount = root / name
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def full_disk(args: argparse.Namespace, root: Path, *, artifacts_only: bool) -> dict:
    """A 40 MB tmpfs filled to the brim while a trial trains: under the trial folders and the artifact store
    (the default layout), or under the artifact store alone (``--artifacts`` on its own disk)."""
    scenario = "full disk: artifact store only" if artifacts_only else "full disk"
    label = "artifacts" if artifacts_only else "folders"
    with small_tmpfs(root, f"tmpfs-{label}") as mount:
        if mount is None:
            return {"scenario": scenario, "skipped": "tmpfs mount not permitted (not root?)"}
        name = "full"
        studies = root / f"full-{label}"  # the study database itself stays on a disk with space
        studies.mkdir()
        trial_dir = studies if artifacts_only else mount
        artifacts = mount / "artifacts" if artifacts_only else trial_dir / name / "artifacts"
        write_spec(trial_dir / f"{name}.toml", sized(SPEC, args, args.full_disk_epochs))
        url = f"sqlite:///{studies / 'full.db'}"
        env = {**os.environ, "FAT2019_SEARCH_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}

        def worker(trials: int) -> list[str]:
            return search_run(name, trial_dir, "--storage", url, "--artifacts", artifacts, "--trials", trials,
                              "--threads", 1, "--heartbeat", 1, "--grace", 3)
        proc = subprocess.Popen(worker(1), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        filler = mount / "filler"
        while proc.poll() is None:  # once the trial has trained two epochs, take the rest of the space
            try:
                study = optuna.load_study(study_name=name, storage=open_storage(url))
            except KeyError:  # the worker has not created the study yet
                time.sleep(0.2)
                continue
            if study.trials and len(study.trials[0].intermediate_values) >= 2:
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
                break
            time.sleep(0.2)
        output = proc.communicate(timeout=300)[0]
        if args.keep_logs:
            Path(args.keep_logs, f"full-disk-{label}.log").write_text(output, encoding="utf-8")
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        first = study.trials[0]
        filler.unlink(missing_ok=True)
        # retries join the queue behind the startup trials queued at creation: ask for all three
        again = subprocess.run(worker(3), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
        return {"scenario": scenario, "exit_code": proc.returncode, "output_lines": len(output.strip().splitlines()),
                "tracebacks": output.count("Traceback"),
                "last_line": output.strip().splitlines()[-1] if output.strip() else "",
                "trial_state": first.state.name, "reason": first.user_attrs.get("reason"),
                "epochs_before": len(first.intermediate_values),
                "retry_exit_code": again.returncode,
                "retry_state": retry[0].state.name if retry else None,
                "retry_resumed_from_epoch": retry[0].user_attrs.get("resumed_from_epoch") if retry else None,
                "temp_files_left": len(list(mount.rglob(".tmp-*"))) + len(list(studies.rglob(".tmp-*")))}


OOM_SPEC = {"study": SPEC["study"], "base": SPEC["base"], "sampler": {"name": "random", "seed": 0},
            "startup": {"near_baseline": 0},
            "space": {"optim.lr": {"float": [1e-4, 1e-2], "log": True}, "model.width": {"choices": [0.0625, 4.0]},
                      "features.crop_frames": {"choices": [64, 4096]}}}
# A trial asking for more memory than there is: width 4 on 4096-frame crops, tens of GB of activations. It is queued
# by hand; the workers' sampler seed (OOM_SEED, used as given by every worker) draws tiny points first, so each
# worker started after the hog is dropped finishes the study instead of drawing another hog.
MEMORY_HOG = {"optim.lr": 3e-3, "model.width": 4.0, "features.crop_frames": 4096}
OOM_SEED = 5


def out_of_memory(args: argparse.Namespace, root: Path, *, killer: str) -> dict:
    """A trial asking for more memory than the worker may have, after a baseline that fits. ``killer``:
    ``allocation`` - the worker's address space is capped (prlimit --as), so the allocation fails in torch;
    ``oom-killer`` - the worker runs in a memory cgroup, so the kernel SIGKILLs it mid-trial (as on a box
    without swap). Workers are started one after another, as a user restarting a dead pane would, until the
    study has its trials or ``max_starts`` workers ran."""
    scenario = f"out of memory: {killer}"
    name = f"oom-{killer}"
    studies = root / name
    studies.mkdir()
    write_spec(studies / f"{name}.toml", sized(OOM_SPEC, args))
    url = f"sqlite:///{studies / (name + '.db')}"
    env = {**os.environ, "FAT2019_SEARCH_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    trials = 3

    def worker(wrapper: list[str], trials: int = trials) -> subprocess.CompletedProcess:
        return subprocess.run([*wrapper, *search_run(name, studies, "--storage", url, "--trials", trials,
                                                     "--threads", 1, "--heartbeat", 1, "--grace", 2,
                                                     "--seed", OOM_SEED)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    first = worker([], trials=1)  # the baseline, unconstrained; then the hog is queued next
    if first.returncode != 0:
        return {"scenario": scenario, "error": first.stdout[-500:] + first.stderr[-500:]}
    optuna.load_study(study_name=name, storage=open_storage(url)).enqueue_trial(MEMORY_HOG)
    cgroup = None
    if killer == "allocation":
        wrapper = ["prlimit", f"--as={args.oom_limit_mb * 2**20}"]
    else:
        cgroup = Path("/sys/fs/cgroup/memory") / f"fat2019-stress-{uuid.uuid4().hex[:8]}"
        try:
            cgroup.mkdir()
            (cgroup / "memory.limit_in_bytes").write_text(str(args.oom_limit_mb * 2**20))
            (cgroup / "memory.memsw.limit_in_bytes").exists() and (
                cgroup / "memory.memsw.limit_in_bytes").write_text(str(args.oom_limit_mb * 2**20))
        except OSError as exc:
            return {"scenario": scenario, "skipped": f"no memory cgroup ({exc.strerror}; cgroup v1 and root needed)"}
        wrapper = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"]
    exits, outputs = [], []
    try:
        for _ in range(args.oom_max_starts):
            done = worker(wrapper)
            exits.append(done.returncode)
            outputs.append(done.stdout + done.stderr)
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            if sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) >= trials:
                break
            time.sleep(3)  # the heartbeat grace: the next worker fails a dead worker's trial and re-queues it
    finally:
        if cgroup is not None:
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    hog = [t for t in study.trials if t.params.get("model.width") == MEMORY_HOG["model.width"]
           and t.params.get("features.crop_frames") == MEMORY_HOG["features.crop_frames"]]
    text = "".join(outputs)
    return {"scenario": scenario, "limit_mb": args.oom_limit_mb, "worker_starts": len(exits),
            "worker_exits": exits, "tracebacks": text.count("Traceback"),
            "last_lines": [out.strip().splitlines()[-1][:160] if out.strip() else "" for out in outputs],
            "finished": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials),
            "asked": trials, "running": sum(t.state == TrialState.RUNNING for t in study.trials),
            "hog_attempts": [(t.state.name, str(t.user_attrs.get("reason", "heartbeat"))[:80]) for t in hog],
            "dropped_line": next((line for line in text.splitlines() if "dropped" in line), None)}


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
            print(json.dumps(full_disk(args, root, artifacts_only=artifacts_only), indent=1), flush=True)
    if "oom" in args.scenarios:
        for killer in ("allocation", "oom-killer"):
            print(json.dumps(out_of_memory(args, root, killer=killer), indent=1), flush=True)
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
