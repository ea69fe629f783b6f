"""Does the quickstart's 12-trial study beat its baseline on held-out test clips? Repeats and both built-in sets.

    python -m benchmarks.bench_quickstart --data demo sampled --repeats 3 --jobs 2 --out bench-quickstart

Each run is ``python -m search.quickstart --threads 1`` itself (``--threads 0``: no ``--threads``, the quickstart's
own default, what a new user's first command gets), in its own studies folder holding
``studies/quickstart.toml`` with the run's data set and the repeat as the sampler's and startup's seed (repeat 0 is
the shipped spec on demo). The record keeps what the quickstart printed: baseline and best on validation and on
the held-out test clips, and its wall time. Records are kept in ``--out``, so an interrupted run resumes. Not a test.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness import REPO, STUDIES, read_spec, write_spec
from trainer import atomic_write_text, ensure_builtin

SPEC = STUDIES / "quickstart.toml"
# the trial values' row is "validation" (one split) or "out-of-fold" (cross-validated trials)
ROW = re.compile(r"^\s*(validation|out-of-fold|held-out test) lwlrap\s+([0-9.]+)\s+([0-9.]+)\s+([+-][0-9.]+)\s*$",
                 re.M)


def quickstart_spec(data: str, repeat: int, spec: Path = SPEC) -> dict[str, dict]:
    """``spec`` on ``data`` with the repeat as the seed of its sampler and its startup trials."""
    tables = read_spec(spec)
    return {**tables, "study": {**tables["study"], "data": data},
            "sampler": {**tables["sampler"], "seed": repeat}, "startup": {**tables["startup"], "seed": repeat}}


def parse(output: str) -> dict:
    """The quickstart's table: {"validation": (baseline, best), "held-out test": (baseline, best)}; "validation" is
    the trials' own values, out-of-fold ones for cross-validated trials."""
    rows = {m.group(1).replace("out-of-fold", "validation"): (float(m.group(2)), float(m.group(3)))
            for m in ROW.finditer(output)}
    if set(rows) != {"validation", "held-out test"}:
        raise ValueError(f"the quickstart printed no result table:\n{output[-2000:]}")
    return rows


def measure(data: str, repeat: int, trials: int, out: Path, spec: Path = SPEC, threads: int = 1) -> dict:
    name = f"quickstart-{data}-r{repeat}"
    record_path = out / "records" / f"{name}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    studies = out / name
    studies.mkdir(parents=True, exist_ok=True)
    write_spec(studies / "quickstart.toml", quickstart_spec(data, repeat, spec))
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "search.quickstart", "--studies-dir", str(studies),
                          *(["--threads", str(threads)] if threads else []), "--trials", str(trials)],
                         cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{name}: the quickstart failed ({run.returncode}):\n{run.stderr[-2000:]}")
    rows = parse(run.stdout)
    record = {"data": data, "repeat": repeat, "trials": trials, "threads": threads or "default",
              "wall_s": time.perf_counter() - started,
              "val_baseline": rows["validation"][0], "val_best": rows["validation"][1],
              "test_baseline": rows["held-out test"][0], "test_best": rows["held-out test"][1],
              "output": run.stdout}
    atomic_write_text(record_path, json.dumps(record, indent=1))
    print(f"{name}: test {record['test_baseline']:.4f} -> {record['test_best']:.4f} in {record['wall_s']:.0f} s",
          flush=True)
    return record


def _data_scale(spec: Path) -> float:
    """The spec's [study] data_scale: the size of the built-in sets its quickstarts train on."""
    from search.spec import load_spec

    return load_spec(spec).data_scale


def table(records: list[dict]) -> str:
    lines = ["| data | repeat | val baseline → best | held-out test baseline → best | test gain | wall |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["data"], r["repeat"])):
        lines.append(f"| {r['data']} | {r['repeat']} | {r['val_baseline']:.4f} → {r['val_best']:.4f} | "
                     f"{r['test_baseline']:.4f} → {r['test_best']:.4f} | {r['test_best'] - r['test_baseline']:+.4f} | "
                     f"{r['wall_s'] / 60:.1f} min |")
    for data in sorted({r["data"] for r in records}):
        group = [r for r in records if r["data"] == data]
        wins = sum(r["test_best"] > r["test_baseline"] for r in group)
        lines.append(f"\n{data}: the search beat its baseline on held-out test in {wins} of {len(group)} repeats")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2, help="quickstarts side by side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each quickstart (0: the quickstart's default, the free cores)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-quickstart")
    parser.add_argument("--spec", type=Path, default=SPEC, help="the quickstart spec to start from (default the shipped one)")
    parser.add_argument("--table", action="store_true", help="the table of the records in --out; run nothing")
    args = parser.parse_args()
    if not args.table:
        for data in args.data:
            ensure_builtin(data, scale=_data_scale(args.spec))
        runs = [(d, r) for r in range(args.repeats) for d in args.data]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda run: measure(*run, args.trials, args.out, args.spec, args.threads), runs))
    records = [json.loads(p.read_text()) for p in sorted((args.out / "records").glob("*.json"))]
    print(table([r for r in records if r["data"] in args.data]))


if __name__ == "__main__":
    main()
