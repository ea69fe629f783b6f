"""benchmarks/stress.py's scenarios of a resource running out while a trial trains: a full disk (under the trial
folders, or under the artifact store alone) and memory (an allocation refused, or the kernel's OOM killer). Each
takes the study spec as tables and returns its findings as a dict."""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from benchmarks.harness import REPO, search_run, write_spec
from search.study.storage import open_storage


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


def full_disk(args: argparse.Namespace, root: Path, spec: dict, *, artifacts_only: bool) -> dict:
    """A 40 MB tmpfs filled to the brim while a trial of ``spec`` (tables) trains: under the trial folders and the
    artifact store (the default layout), or under the artifact store alone (``--artifacts`` on its own disk)."""
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
        write_spec(trial_dir / f"{name}.toml", spec)
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


# The out-of-memory study's search, under the [study] and [base] of the spec it is given.
OOM_SEARCH = {"sampler": {"name": "random", "seed": 0}, "startup": {"near_baseline": 0},
              "space": {"optim.lr": {"float": [1e-4, 1e-2], "log": True}, "model.width": {"choices": [0.0625, 4.0]},
                        "features.crop_frames": {"choices": [64, 4096]}}}
# A trial asking for more memory than there is: width 4 on 4096-frame crops, tens of GB of activations. It is queued
# by hand; the workers' sampler seed (OOM_SEED, used as given by every worker) draws tiny points first, so each
# worker started after the hog is dropped finishes the study instead of drawing another hog.
MEMORY_HOG = {"optim.lr": 3e-3, "model.width": 4.0, "features.crop_frames": 4096}
OOM_SEED = 5


def out_of_memory(args: argparse.Namespace, root: Path, spec: dict, *, killer: str) -> dict:
    """A trial asking for more memory than the worker may have, after the baseline of ``spec`` (tables: its
    [study] and [base], under the search of OOM_SEARCH), which fits. ``killer``:
    ``allocation`` - the worker's address space is capped (prlimit --as), so the allocation fails in torch;
    ``oom-killer`` - the worker runs in a memory cgroup, so the kernel SIGKILLs it mid-trial (as on a box
    without swap). Workers are started one after another, as a user restarting a dead pane would, until the
    study has its trials or ``max_starts`` workers ran."""
    scenario = f"out of memory: {killer}"
    name = f"oom-{killer}"
    studies = root / name
    studies.mkdir()
    write_spec(studies / f"{name}.toml", {"study": spec["study"], "base": spec["base"], **OOM_SEARCH})
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
