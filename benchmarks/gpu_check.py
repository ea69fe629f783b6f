"""The GPU check: one script for one command on a CUDA box, each step timed, one table at the end.

    python -m benchmarks.gpu_check --out /tmp/gpu-check             # on a CUDA box (defaults sized for an H200)
    python -m benchmarks.gpu_check --tiny --out /tmp/gpu-check      # every step at toy size on CPU (a check)

Steps, and the time each is expected to take on an H200 at the defaults (estimates from model FLOPs and the
CPU runs, not yet measured on one; the whole check is meant to end within about 7 of one command's 10 minutes):
  1. tests     pytest on the tests that touch CUDA (every test file under tests/ that mentions ``cuda``: the
               whole file where a module-level name does, as test_features.py's DEVICES; else only the test
               functions that do), as a subprocess: passed / failed / skipped counts (--tiny: the first
               of them only).                                                                      ~1 min
  2. baseline  the m12sl baseline trial (TrainConfig() defaults: ResNet34, 64 mels, n_fft 1764 / hop 220, batch
               32) for --epochs (30) on a curated-size synthetic set with FAT2019's clip lengths
               (benchmarks/scale_data.py, --fraction 1.0 = 4,970 clips): per-epoch time, samples/s, peak GPU
               memory (torch.cuda.max_memory_allocated), model FLOPs per training sample (counted by
               torch.utils.flop_counter on one batch) and the achieved share of --peak-tflops (bf16 dense).
               channels_last and torch.compile are not knobs of TrainConfig: recorded as "not supported by
               the trainer".                                                                       ~3 min
  3. panes     1, 2 and 4 ``python -m search.run`` panes on one device over a copy of studies/demo.toml
               (--pane-epochs, --pane-seconds each): finished trials per hour, peak memory per pane (GPU
               memory from nvidia-smi, host RSS from /proc, each over the pane's process tree).  ~2 min
  4. kernel    ``python -m search.best --export --reuse-checkpoints`` of the 1-pane study, then the generated
               kernel.py (search.kaggle.export.run_kernel, a separate process) over the demo test clips on the
               device: clips/s and the projected Kaggle time for 3,361 clips.                     ~0.5 min

Without CUDA (and without --tiny) steps 2-4 record "skipped: no CUDA"; under --tiny they run on CPU at toy size
and only their GPU figures are "skipped: no CUDA". Writes under --out: gpu_check.json (every step: seconds and
figures, or a skip reason, or an error line), logs/ (one log per subprocess) and logs.tar.gz of
it, and table.md. Exit 1 when a step failed.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import REPO as ROOT
from benchmarks.harness import (
    STUDIES,
    Fleet,
    last_line,
    process_tree,
    read_spec,
    search_run,
    status_kb,
    with_study,
    write_spec,
)

NO_CUDA = "skipped: no CUDA"
NOT_SUPPORTED = "not supported by the trainer (TrainConfig has no channels_last / compile knob)"
H200_BF16_TFLOPS = 989.0  # NVIDIA's dense bf16 figure for the H200; an 8192^3 bf16 matmul measured ~790 here
TINY_MODEL = {"model.depth": 18, "model.width": 0.0625, "features.crop_frames": 128, "optim.batch_size": 8}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, logs and table.md")
    p.add_argument("--tiny", action="store_true", help="every step at toy size on CPU")
    p.add_argument("--steps", default="tests,baseline,panes,kernel", help="comma-separated subset of the steps")
    p.add_argument("--fraction", type=float, help="baseline data set size, 1.0 = FAT2019 curated (default 1.0; "
                                                   "--tiny 0.01)")
    p.add_argument("--epochs", type=int, help="baseline epochs (default 30; --tiny 1)")
    p.add_argument("--panes", default=None, help="pane counts (default 1,2,4)")
    p.add_argument("--pane-epochs", type=int, help="the demo study's trial epochs (default 10; --tiny 1)")
    p.add_argument("--pane-seconds", type=float, help="each pane starts no trial after this (default 30; --tiny 1)")
    p.add_argument("--pane-scale", type=float, help="demo set scale for panes and kernel (default 1.0; --tiny 0.05)")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS, help="the device's bf16 dense rate")
    p.add_argument("--step-timeout", type=float, default=240, help="seconds any one subprocess may take")
    a = p.parse_args(argv)
    tiny = a.tiny
    a.fraction = a.fraction if a.fraction is not None else (0.01 if tiny else 1.0)
    a.epochs = a.epochs if a.epochs is not None else (1 if tiny else 30)
    a.panes = [int(n) for n in (a.panes or "1,2,4").split(",")]
    a.pane_epochs = a.pane_epochs if a.pane_epochs is not None else (1 if tiny else 10)
    a.pane_seconds = a.pane_seconds if a.pane_seconds is not None else (1.0 if tiny else 30.0)
    a.pane_scale = a.pane_scale if a.pane_scale is not None else (0.05 if tiny else 1.0)
    a.steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = set(a.steps) - set(STEPS)
    if unknown:
        p.error(f"unknown step(s) {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}")
    a.cuda = torch.cuda.is_available() and not tiny
    a.device = "cuda" if a.cuda else "cpu"
    return a


def run_logged(command: list[str], log: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root, stdout and stderr into ``log``; raise on a timeout."""
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})})
    return done


# -- step 1: the tests that touch CUDA ----------------------------------------------------------------------------
def cuda_tests() -> list[str]:
    """pytest node ids: whole files whose module-level code mentions cuda, else the test functions that do. Not
those of tests/benchmarks/: they run benchmarks, this check among them."""
    ids = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "cuda" not in text or path.is_relative_to(ROOT / "tests" / "benchmarks"):
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(text)
        module_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Import,
                                                                    ast.ImportFrom))]
        if any("cuda" in ast.get_source_segment(text, n) for n in module_level):
            ids.append(rel)
            continue
        ids += [f"{rel}::{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")
                and "cuda" in ast.get_source_segment(text, n)]
    return ids


def step_tests(a: argparse.Namespace) -> dict:
    ids = cuda_tests()
    if not ids:
        raise RuntimeError("no test under tests/ mentions cuda")
    if a.tiny:  # a check of the step itself: on CPU these tests are the suite's own, which runs them anyway
        ids = ids[:1]
    log = a.logs / "tests.log"
    done = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *ids], log,
                      a.step_timeout)
    tail = log.read_text(encoding="utf-8", errors="replace")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    figures = {"tests": ids, "passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
               "skipped": counts.get("skipped", 0), "errors": counts.get("error", 0) + counts.get("errors", 0),
               "exit_code": done.returncode, "cuda": torch.cuda.is_available()}
    if done.returncode != 0:
        raise StepFailed(f"pytest exited {done.returncode}: {last_line(log)}", figures)
    return figures


# -- step 2: the baseline trial --------------------------------------------------------------------------------
def flops_per_sample(config, device: torch.device) -> float:
    """Training FLOPs of one sample (forward + backward) counted by torch's FlopCounterMode on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.models import build_model

    model = build_model(config.model).to(device)
    x = torch.randn(2, config.features.n_mels, config.features.crop_frames, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def step_baseline(a: argparse.Namespace) -> dict:
    if not torch.cuda.is_available() and not a.tiny:
        raise StepSkipped(NO_CUDA)
    from benchmarks.scale_data import make_dataset
    from trainer import TrainConfig, train_and_evaluate
    from trainer.prepare import prepare_data

    overrides = {"optim.epochs": a.epochs, "device": a.device, **(TINY_MODEL if a.tiny else {})}
    config = TrainConfig().with_overrides(overrides)
    root = a.work / "baseline"
    started = time.perf_counter()
    summary = make_dataset(root, config.features, fraction=a.fraction, noisy=False, log=lambda line: None)
    data_s = time.perf_counter() - started
    n_train = len(prepare_data(config, root / "data", device=torch.device("cpu"), cache_dir=root / "cache",
                               progress=False).train_bank)
    dev = torch.device(a.device)
    if a.cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train_and_evaluate(config, root / "data", workdir=a.work / "baseline-run", cache_dir=root / "cache",
                                progress=False, verbose=False, threads=None if a.cuda else 1)
    epochs = [h["epoch_time"] for h in result.history]
    steady = epochs[1:] or epochs
    mean_epoch = sum(steady) / len(steady)
    flops = flops_per_sample(config, dev)
    figures = {
        "config": "TrainConfig() defaults" + ("" if not a.tiny else " with " + json.dumps(TINY_MODEL)),
        "device": a.device, "curated_clips": summary["clips"]["train_curated"], "train_clips": n_train,
        "data_build_s": round(data_s, 2), "epochs": len(epochs), "epoch_s": [round(t, 3) for t in epochs],
        "epoch_s_mean_after_first": round(mean_epoch, 3), "samples_per_s": round(n_train / mean_epoch, 1),
        "best_lwlrap": round(result.best_lwlrap, 4), "wall_s": round(result.wall_time, 2),
        "train_gflops_per_sample": round(flops / 1e9, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if a.cuda else NO_CUDA,
        "bf16_fraction_of_peak": (round(flops * n_train / mean_epoch / (a.peak_tflops * 1e12), 4) if a.cuda
                                  else NO_CUDA),
        "peak_tflops_assumed": a.peak_tflops,
        "channels_last": NOT_SUPPORTED, "torch_compile": NOT_SUPPORTED,
    }
    return figures


# -- step 3: search.run panes ------------------------------------------------------------------------------------
def demo_spec(folder: Path, a: argparse.Namespace) -> Path:
    """``folder`` holding studies/demo.toml resized to ``--pane-epochs`` and ``--pane-scale``."""
    write_spec(folder / "demo.toml", with_study(read_spec(STUDIES / "demo.toml"), epochs=a.pane_epochs,
                                                data_scale=a.pane_scale))
    return folder


def _gpu_mib_by_pid() -> dict[int, float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            found[int(parts[0])] = float(parts[1]) if parts[1].replace(".", "").isdigit() else 0.0
    return found


def count_finished(studies: Path) -> dict[str, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{studies / 'demo.db'}")
    states = [t.state.name for t in study.trials]
    return {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


def run_panes(a: argparse.Namespace, n: int) -> dict:
    studies = demo_spec(a.work / f"panes-{n}", a)
    threads = max(1, (os.cpu_count() or 1) // n)
    panes = Fleet(search_run("demo", studies, "--device", a.device, "--threads", threads, "--timeout", a.pane_seconds),
                  a.logs, prefix=f"pane-{n}", env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    started = time.perf_counter()
    procs = [panes.start() for _ in range(n)]
    rss = [0.0] * n
    gpu = [0.0] * n
    while any(p.poll() is None for p in procs):
        if time.perf_counter() - started > a.step_timeout:
            panes.kill()
            raise RuntimeError(f"{n} panes ran past --step-timeout {a.step_timeout:.0f} s")
        by_pid = _gpu_mib_by_pid() if a.cuda else {}
        for i, p in enumerate(procs):
            if p.poll() is None:
                tree = process_tree(p.pid)
                rss[i] = max(rss[i], sum(status_kb("VmRSS", q) for q in tree) / 1024)
                gpu[i] = max(gpu[i], sum(by_pid.get(q, 0.0) for q in tree))
        time.sleep(0.5)
    wall = time.perf_counter() - started
    panes.check()
    states = count_finished(studies)
    finished = states["COMPLETE"] + states["PRUNED"]
    return {"panes": n, "threads_per_pane": threads, "wall_s": round(wall, 2), "finished": finished,
            "failed": states["FAIL"], "trials_per_hour": round(finished * 3600 / wall, 1),
            "peak_rss_mib_per_pane": round(max(rss)), "studies": str(studies),
            "peak_gpu_mib_per_pane": round(max(gpu)) if a.cuda else NO_CUDA}


def step_panes(a: argparse.Namespace) -> dict:
    if not torch.cuda.is_available() and not a.tiny:
        raise StepSkipped(NO_CUDA)
    runs = [run_panes(a, n) for n in a.panes]
    if any(r["finished"] == 0 for r in runs):
        raise StepFailed("a pane count finished no trial", {"runs": runs})
    return {"device": a.device, "epochs_per_trial": a.pane_epochs, "data_scale": a.pane_scale, "runs": runs}


# -- step 4: the generated kernel ---------------------------------------------------------------------------------
def step_kernel(a: argparse.Namespace) -> dict:
    if not torch.cuda.is_available() and not a.tiny:
        raise StepSkipped(NO_CUDA)
    from search.kaggle.export import KAGGLE_TEST_CLIPS, run_kernel
    from trainer.synth import ensure_demo_data

    studies = a.work / "panes-1"
    if not (studies / "demo.db").is_file():  # the panes step was left out: one short pane for a trial to export
        run_panes(a, 1)
    export = a.work / "export"
    log = a.logs / "export.log"
    done = run_logged([sys.executable, "-m", "search.best", "--study", "demo", "--studies-dir", str(studies),
                       "--export", "--reuse-checkpoints", "--out", str(export)], log, a.step_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"search.best --export exited {done.returncode}: {last_line(log)}")
    data = ensure_demo_data(scale=a.pane_scale)
    timing = a.work / "kernel-timing.json"
    started = time.perf_counter()
    run_kernel(export, data / "test", data / "sample_submission.csv", a.work / "submission.csv", device=a.device,
               timing=timing, timeout=a.step_timeout)
    process_s = time.perf_counter() - started
    stats = json.loads(timing.read_text(encoding="utf-8"))
    per_clip = stats["seconds"] / stats["clips"]
    return {"device": stats["device"], "clips": stats["clips"], "seconds": round(stats["seconds"], 3),
            "process_s": round(process_s, 2), "clips_per_s": round(stats["clips"] / stats["seconds"], 1),
            "projected_kaggle_s": round(per_clip * KAGGLE_TEST_CLIPS, 1), "projected_for_clips": KAGGLE_TEST_CLIPS}


STEPS = {"tests": step_tests, "baseline": step_baseline, "panes": step_panes, "kernel": step_kernel}


class StepSkipped(Exception):
    """A step that cannot run here; its message is the reason recorded."""


class StepFailed(RuntimeError):
    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


# -- the table ------------------------------------------------------------------------------------------------------
def summary(name: str, record: dict) -> str:
    if "error" in record:
        return f"FAILED: {record['error']}"
    if "skipped" in record:
        return record["skipped"]
    f = record["figures"]
    if name == "tests":
        return f"{f['passed']} passed, {f['failed']} failed, {f['skipped']} skipped ({len(f['tests'])} ids)"
    if name == "baseline":
        frac = f["bf16_fraction_of_peak"]
        share = f"{frac:.1%} of {f['peak_tflops_assumed']:.0f} TFLOP/s" if isinstance(frac, float) else f"bf16: {frac}"
        mem = f"{f['peak_gpu_mib']} MiB" if isinstance(f["peak_gpu_mib"], int) else f"GPU memory: {f['peak_gpu_mib']}"
        return (f"{f['train_clips']} clips, {f['epochs']} epochs on {f['device']}: {f['epoch_s_mean_after_first']} s/epoch, "
                f"{f['samples_per_s']} samples/s, {f['train_gflops_per_sample']} GFLOP/sample, {share}, {mem}; "
                f"channels_last / torch.compile: not supported by the trainer")
    if name == "panes":
        return "; ".join(f"{r['panes']} pane(s): {r['trials_per_hour']} trials/h ({r['finished']} in {r['wall_s']} s), "
                         f"{r['peak_rss_mib_per_pane']} MiB RSS, GPU "
                         + (f"{r['peak_gpu_mib_per_pane']} MiB" if isinstance(r['peak_gpu_mib_per_pane'], int)
                            else "n/a (no CUDA)") for r in f["runs"])
    if name == "kernel":
        return (f"{f['clips']} clips on {f['device']}: {f['clips_per_s']} clips/s, projected "
                f"{f['projected_kaggle_s']} s for {f['projected_for_clips']} clips")
    return json.dumps(f)


def table(records: dict) -> str:
    lines = ["| step | seconds | result |", "|---|---|---|"]
    for name, record in records.items():
        lines.append(f"| {name} | {record.get('seconds', 0):.1f} | {summary(name, record)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.logs = a.out / "logs"
    a.logs.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    report = {"tiny": a.tiny, "device": a.device, "cuda_available": torch.cuda.is_available(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__, "python": sys.version.split()[0], "steps": records}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        a.work = Path(work)
        for name in a.steps:
            print(f"[gpu_check] {name} ...", flush=True)
            started = time.perf_counter()
            try:
                records[name] = {"figures": STEPS[name](a)}
            except StepSkipped as exc:
                records[name] = {"skipped": str(exc)}
            except StepFailed as exc:
                records[name] = {"error": str(exc), "figures": exc.figures}
            except Exception as exc:  # one step's failure is recorded; the others still run
                message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                records[name] = {"error": f"{type(exc).__name__}: {message}"}
            records[name]["seconds"] = round(time.perf_counter() - started, 2)
            print(f"[gpu_check] {name}: {records[name]['seconds']:.1f} s, {summary(name, records[name])}", flush=True)
            (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with tarfile.open(a.out / "logs.tar.gz", "w:gz") as bundle:  # one file back from a device run, not a dozen
        bundle.add(a.logs, arcname="logs")
    text = table(records)
    (a.out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    failed = [n for n, r in records.items() if "error" in r]
    if failed:
        print(f"gpu_check: failed step(s): {', '.join(failed)} (see {a.out / 'gpu_check.json'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
