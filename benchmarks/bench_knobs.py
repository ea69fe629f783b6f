"""Where in its range each knob of the demo space helps or hurts, on held-out test labels: one-knob sweeps from the base.

    python -m benchmarks.bench_knobs --data demo sampled --jobs 2 --out bench-knobs
    python -m benchmarks.bench_knobs --data demo sampled --out bench-knobs --table   # the table; trains nothing

A point is the demo spec's base (40% of the curated clips held out for validation, as in the search-quality
benchmark) with one knob of its [space] changed: every other choice of a categorical knob; the low end, the middle
and the high end of a numeric one (on a log-scaled one also its quarter points, on the log scale). A conditional knob's points
switch on what it needs (the min-max weight's points train ``bce_minmax``), and a choice that switches a
conditional knob on sets it to the middle of its range, as a sampler would land somewhere inside it; points that
give the same config are trained once. Each trains once at the spec's trial budget (30 epochs), one torch thread,
seed 0; its best epoch's weights (what a trial keeps and an export reuses) are scored on the set's held-out test
clips with ``predict_bank``, the code the kernel runs, and its best validation lwlrap is the value a study would
see. The base trains with ``--base-seeds`` seeds: the spread the deltas are read against. A point "loses" where
its test lwlrap is below the base's worst seed on every set, "collapses" where more than ``COLLAPSE`` (0.1) below
it on every set (or diverges), "gains" where above the base's best seed on every set; a knob "only loses" where
every point of it loses. One JSON record per point and set in ``--out/records`` (an interrupted run
resumes). Not a test.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from benchmarks.harness import STUDIES
from search.spec import Param, StudySpec, load_spec
from trainer import atomic_write_text

DEMO_SPEC = STUDIES / "demo.toml"
VAL_FRACTION = 0.4  # pinned, as the search-quality benchmark pins it
BASE = "(base)"
COLLAPSE = 0.1  # a point "collapses" training where its test lwlrap is this far below the base's worst seed
# Knobs that change nothing without another setting (the spec's space cannot say so): their points train with it.
# lsoft relabels noisy clips only, and the base trains on curated alone.
NEEDS = {"loss.lsoft_beta": {"data.use_noisy": True}, ("loss.name", "lsoft"): {"data.use_noisy": True}}


@dataclass(frozen=True)
class Point:
    knob: str        # the swept key, or BASE
    value: Any
    overrides: dict = field(hash=False)  # of the spec's base: the swept key and what it needs switched on
    seed: int = 0

    @property
    def name(self) -> str:
        label = "base" if self.knob == BASE else f"{self.knob}={self.value}"
        return f"{label}-s{self.seed}".replace("/", "_")


def _round(value: float, d: FloatDistribution | IntDistribution) -> float | int:
    if d.step is not None:
        value = d.low + round((value - d.low) / d.step) * d.step
    if isinstance(d, IntDistribution):
        return int(round(value))
    return float(f"{value:.3g}")


def sweep_values(d) -> list:
    """Every choice of a categorical knob; the low end, the middle and the high end of a numeric one (and the
    quarter points of a log-scaled one)."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if d.log:  # a log range spans decades: its quarter points too
        grid = [d.low * (d.high / d.low) ** (k / 4) for k in range(5)]
    else:
        grid = [d.low, (d.low + d.high) / 2, d.high]
    values = []
    for v in grid:
        v = _round(v, d)
        if v not in values:
            values.append(v)
    return values


def middle(param: Param):
    values = sweep_values(param.distribution)
    return values[len(values) // 2]


def points(spec: StudySpec, base_seeds: int, knobs: list[str] | None = None) -> list[Point]:
    """The base (once per seed), then every knob's points in spec order (or only ``knobs``'), each distinct
    config once."""
    base = spec.base_config().flat()
    found = [Point(BASE, None, {}, seed) for seed in range(base_seeds)]
    seen = {json.dumps(base, sort_keys=True, default=str)}
    for param in spec.space:
        if knobs is not None and param.key not in knobs:
            continue
        for value in sweep_values(param.distribution):
            overrides = {key: allowed[0] for key, allowed in param.when.items() if base.get(key) not in allowed}
            overrides[param.key] = value
            overrides.update(NEEDS.get(param.key, {}), **NEEDS.get((param.key, value), {}))
            values = {**base, **overrides}
            for other in spec.space:  # a choice that switches a conditional knob on: the knob at its middle
                if other.key not in overrides and other.when and other.is_active(values) \
                        and not other.is_active(base):
                    overrides[other.key] = middle(other)
            config = json.dumps(spec.config_for(overrides).flat(), sort_keys=True, default=str)
            if config not in seen:
                seen.add(config)
                found.append(Point(param.key, value, overrides))
    return found


def train_point(point: Point, data: str, scale: float, spec_path: str, out: str, epochs: int | None) -> dict:
    """Train one point, score its best epoch on the held-out test clips; one record (runs in a worker process)."""
    import torch

    from trainer import (
        ConfigError,
        NonFiniteLossError,
        build_model,
        ensure_builtin,
        labelled_bank,
        lwlrap,
        predict_bank,
        read_labelled_csv,
        train_and_evaluate,
    )

    torch.set_num_threads(1)
    spec = load_spec(Path(spec_path))
    data_dir = ensure_builtin(data, scale=scale)
    record = {"data": data, "scale": scale, "knob": point.knob, "value": point.value, "overrides": point.overrides,
              "seed": point.seed, "val": None, "test": None, "best_epoch": None, "error": None}
    started = time.perf_counter()
    try:
        budget = {} if epochs is None else {"optim.epochs": epochs}
        config = spec.config_for({**point.overrides, "data.val_fraction": VAL_FRACTION, "seed": point.seed, **budget})
        result = train_and_evaluate(config, data_dir, workdir=Path(out) / "runs" / data / point.name, threads=1,
                                    verbose=False, progress=False)
        model = build_model(config.model)
        model.load_state_dict(torch.load(result.best_path, weights_only=True))
        bank, targets = labelled_bank(read_labelled_csv(data_dir / "test_labels.csv", data_dir / "test"),
                                      config.features)
        probs = predict_bank(model, bank, n_frames=config.features.crop_frames, pad_mode=config.features.pad_mode,
                             batch_size=max(config.optim.batch_size, 64))
        record.update(val=result.best_lwlrap, test=lwlrap(targets, probs), best_epoch=result.best_epoch,
                      epochs=result.epochs_run)
    except (NonFiniteLossError, ConfigError) as error:  # a diverged or impossible point is a result, not a crash
        record["error"] = f"{type(error).__name__}: {error}"
    record["wall_s"] = round(time.perf_counter() - started, 1)
    return record


def record_path(out: Path, data: str, point: Point) -> Path:
    return out / "records" / f"knobs-{data}-{point.name}.json"


def run(data_sets: list[str], spec_path: Path, scale: float, base_seeds: int, knobs: list[str] | None, jobs: int,
        out: Path, epochs: int | None) -> None:
    spec = load_spec(spec_path)
    planned = points(spec, base_seeds, knobs)
    todo = [(data, p) for p in planned for data in data_sets if not record_path(out, data, p).is_file()]
    print(f"{len(todo)} trainings to run ({len(planned)} points per set), {jobs} at a time", flush=True)
    context = multiprocessing.get_context("spawn")  # torch in a forked child of a threaded parent can hang
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(train_point, p, data, scale, str(spec_path), str(out), epochs): (data, p)
                   for data, p in todo}
        for done, future in enumerate(as_completed(futures), 1):
            data, p = futures[future]
            record = future.result()
            atomic_write_text(record_path(out, data, p), json.dumps(record, indent=1) + "\n")
            score = record["error"] or f"val {record['val']:.4f} test {record['test']:.4f}"
            print(f"[{done}/{len(todo)}] {data} {p.name}: {score} ({record['wall_s']:.0f} s)", flush=True)


def load_records(out: Path, data_sets: list[str]) -> list[dict]:
    records = [json.loads(path.read_text()) for path in sorted((out / "records").glob("knobs-*.json"))]
    return [r for r in records if r["data"] in data_sets]


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def table(records: list[dict], data_sets: list[str], spec: StudySpec, base_seeds: int,
          knobs: list[str] | None = None) -> str:
    """Markdown: each point's validation and test lwlrap per set, its test delta against the base's mean, and
    whether it loses, gains or stays within the base's seed spread on every set; then one verdict per knob."""
    by = {(r["data"], r["knob"], json.dumps(r["value"]), r["seed"]): r for r in records}
    spread = {}
    for data in data_sets:
        tests = [by[(data, BASE, "null", s)]["test"] for s in range(base_seeds) if (data, BASE, "null", s) in by]
        if tests:
            spread[data] = (min(tests), statistics.mean(tests), max(tests))
    lines = ["| knob | value | trained with | " + " | ".join(f"{d} val | {d} test (vs base)" for d in data_sets)
             + " | verdict |", "|---|---|---|" + "---|---|" * len(data_sets) + "---|"]
    for data in data_sets:
        if data in spread:
            low, mean, high = spread[data]
            lines.append(f"| {BASE} {data} | {base_seeds} seeds | | test {low:.4f} to {high:.4f}, mean {mean:.4f} |"
                         + " |" * (2 * len(data_sets)))
    verdicts: dict[str, list[str]] = {}   # per point, over the sets
    set_marks: dict[str, list[str]] = {}  # per point and set
    for p in points(spec, base_seeds, knobs):
        if p.knob == BASE:
            continue
        cells, marks = [], []
        for data in data_sets:
            r = by.get((data, p.knob, json.dumps(p.value), p.seed))
            if r is None or data not in spread:
                cells += ["", ""]
                marks.append("missing")
                continue
            low, mean, high = spread[data]
            if r["test"] is None:
                cells += [r["error"].split(":")[0], "—"]
                marks.append("collapses")
                continue
            cells += [fmt(r["val"]), f"{r['test']:.4f} ({r['test'] - mean:+.4f})"]
            marks.append("collapses" if r["test"] < low - COLLAPSE else "loses" if r["test"] < low
                         else "gains" if r["test"] > high else "noise")
        if set(marks) == {"missing"}:  # not trained (a --knobs subset, or a run still going): not in the table
            continue
        verdict = marks[0] if len(set(marks)) == 1 else "loses" if set(marks) <= {"loses", "collapses"} else "mixed"
        verdict = "in the base's spread" if verdict == "noise" else verdict
        verdicts.setdefault(p.knob, []).append(verdict)
        set_marks.setdefault(p.knob, []).extend(marks)
        extra = " ".join(f"{k.split('.')[-1]}={v}" for k, v in p.overrides.items() if k != p.knob)
        lines.append(f"| `{p.knob}` | {p.value} | {extra} | " + " | ".join(cells) + f" | {verdict} |")
    lines.append("")
    lines.append("| knob | points | verdict |")
    lines.append("|---|---|---|")
    for knob, marks in verdicts.items():
        counts = ", ".join(f"{marks.count(m)} {m}" for m in dict.fromkeys(marks))
        each = set(set_marks[knob])
        summary = ("collapses at every point" if each == {"collapses"} else "only loses" if each <= {"loses", "collapses"}
                   else "gains somewhere" if "gains" in each
                   else "loses somewhere, never gains" if each & {"loses", "collapses"} else "within the base's spread")
        if "collapses" in marks and each != {"collapses"}:
            summary += f"; collapses at {marks.count('collapses')} of {len(marks)} points"
        lines.append(f"| `{knob}` | {counts} | {summary} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--spec", type=Path, default=DEMO_SPEC, help="the spec whose base and space are swept")
    parser.add_argument("--scale", type=float, default=1.0, help="data_scale of the built-in sets")
    parser.add_argument("--base-seeds", type=int, default=3)
    parser.add_argument("--knobs", nargs="+", default=None, help="sweep only these keys of the space (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (one torch thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench-knobs"))
    parser.add_argument("--table", action="store_true", help="print the table of the records; train nothing")
    parser.add_argument("--epochs", type=int, default=None, help="override the spec's trial budget (tiny runs)")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    unknown = [key for key in args.knobs or [] if key not in {p.key for p in spec.space}]
    if unknown:
        parser.error(f"--knobs {' '.join(unknown)}: not in {args.spec}'s [space] "
                     f"(its keys: {', '.join(p.key for p in spec.space)})")
    if not args.table:
        run(args.data, args.spec, args.scale, args.base_seeds, args.knobs, args.jobs, args.out, args.epochs)
    print(table(load_records(args.out, args.data), args.data, spec, args.base_seeds, args.knobs))


if __name__ == "__main__":
    main()
