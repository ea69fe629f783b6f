"""Tuning in rounds: does round 2 started ``--from`` round 1 reach a cold round 2's held-out best sooner?

    python -m benchmarks.bench_rounds --data demo sampled --repeats 3 --jobs 2 --out bench-rounds
    python -m benchmarks.bench_rounds --out bench-rounds --table     # table of the records; run nothing

Per data set and repeat: round 1 is a 30-trial study of a deliberately narrow space (the demo spec's, with
``optim.lr`` in [5e-4, 2e-3] and ``features.crop_frames`` in [128, 256], the base at the top of both). Round 2's
space is round 1's with every range the report's edge check flags at round 1's best widened the way the report's
"Next round" lines widen it (``search.views.checks.widened``); where nothing is flagged, both ranges take the demo
spec's. Round 2 runs twice, 30 trials of its own each (``--trials`` counts a study's own trials): ``cold``, a new
study, and ``warm``, ``search.run --from`` round 1 (round 1's trials inherited, nothing retrained). Every change
of a study's best is exported through ``search.best --export --reuse-checkpoints`` (an inherited trial's weights
are read from round 1's artifact store), its kernel runs on the held-out test clips and is scored against
``test_labels.csv``, so each study's held-out best after k of its own trials is known. The table reads: cold and
warm at 30 trials, and how many of its own trials warm needed to reach cold's 30-trial held-out best.

Trials are 10 epochs with ASHA rungs at 3 and 6 (the search-quality benchmark's ``ours-10ep``, a third of the
shipped trial budget: three 30-trial studies per set and repeat must fit the 2-core box); one worker, one torch
thread, the repeat's seed; 40% of the curated clips held out for validation, as in the search-quality benchmark. Every study and export is kept in ``--out``, so an interrupted run resumes. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from benchmarks.bench_search_quality import epochs_spent, incumbents, ordered_trials
from benchmarks.harness import REPO, exported_test_score, run_worker, search_run, toml_value, with_study, write_spec
from benchmarks.quality_strategies import Run as QualityRun
from benchmarks.quality_strategies import spec_tables
from search.study.record import best_trial, load_study
from search.views.checks import edge_params, widened
from trainer import atomic_write_text, ensure_builtin

STRATEGY = "ours-10ep"
NARROW = {"optim.lr": {"float": [5e-4, 2e-3], "log": True}, "features.crop_frames": {"int": [128, 256], "log": True}}
ROUNDS = ("round1", "cold", "warm")


def held_out_score(study, studies: Path, trial: FrozenTrial, data_dir: Path, out: Path) -> float:
    """Export ``trial`` with its own weights (a round compares searches, not export recipes) and score its kernel
    on the held-out test clips (cached per study and trial)."""
    cache = out / "exports" / f"{study.name}-{trial.number}.json"
    if cache.exists():
        return json.loads(cache.read_text())["test_lwlrap"]
    score, *_ = exported_test_score(study.name, studies, ["--reuse-checkpoints", "--trial", str(trial.number)],
                                    data_dir, out / "logs" / f"{study.name}-export.log")
    atomic_write_text(cache, json.dumps({"test_lwlrap": score, "trial": trial.number, "study": study.name}))
    return score


@dataclass(frozen=True)
class Study:
    data: str
    round: str
    repeat: int

    @property
    def name(self) -> str:
        return f"rounds-{self.data}-{self.round}-r{self.repeat}"


def with_space(spec: dict[str, dict], entries: dict[str, dict]) -> dict[str, dict]:
    """``spec`` with the ``[space]`` entries of ``entries`` replaced (each must be there)."""
    missing = set(entries) - set(spec["space"])
    if missing:
        raise KeyError(f"the spec has no [space] entry {', '.join(sorted(missing))}")
    return {**spec, "space": {**spec["space"], **entries}}


def demo_entries(keys) -> dict[str, dict]:
    space = spec_tables(QualityRun("demo", STRATEGY, 0), 1.0)["space"]
    return {key: space[key] for key in keys}


def widened_entries(best: FrozenTrial) -> dict[str, dict]:
    """Round 2's changed [space] entries: the report's widening of every flagged edge at round 1's best."""
    return {edge.name: tomllib.loads(f"entry = {value}")["entry"] for edge in edge_params(best)
            if edge.name in NARROW and (value := widened(edge, best.distributions[edge.name])) is not None}


def own_incumbents(trials: list[FrozenTrial]) -> list[tuple[int, FrozenTrial]]:
    """(own trials finished when it became the best, trial): inherited trials come first and cost nothing."""
    return incumbents(sorted(trials, key=lambda t: (own(t), t.number)), cost=own)


def own(trial: FrozenTrial) -> bool:
    return "from_study" not in trial.user_attrs


def measure(study: Study, studies: Path, out: Path, scale: float, trials: int, spec: dict, extra: list[str]) -> dict:
    record_path = out / "records" / f"{study.name}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    started = time.perf_counter()
    write_spec(studies / f"{study.name}.toml", spec)
    run_worker(search_run(study.name, studies, "--trials", trials, "--threads", 1, "--seed", study.repeat,
                          "--device", "cpu", *extra), out / "logs" / f"{study.name}.log")
    handle = load_study(study.name, None, studies)
    finished = ordered_trials(handle.study)
    data_dir = ensure_builtin(study.data, scale=scale)
    record = {"data": study.data, "round": study.round, "repeat": study.repeat,
              "own_trials": sum(map(own, finished)),
              "inherited": sum(not own(t) for t in finished),
              "epochs": sum(epochs_spent(t) for t in finished if own(t)),
              "incumbents": [{"own_trials": count, "trial": t.number, "val": t.value, "inherited": not own(t),
                              "test": held_out_score(study, studies, t, data_dir, out)}
                             for count, t in own_incumbents(finished)]}
    record["bench_s"] = time.perf_counter() - started
    atomic_write_text(record_path, json.dumps(record, indent=1))
    last = record["incumbents"][-1]
    print(f"{study.name}: {record['own_trials']} own + {record['inherited']} inherited trials; best #{last['trial']} "
          f"val {last['val']:.4f} test {last['test']:.4f}", flush=True)
    return record


def measure_chain(data: str, repeat: int, out: Path, scale: float, trials: int, epochs: int | None) -> list[dict]:
    """Round 1, then round 2 cold and warm with the space round 1's report asks for."""
    names = [Study(data, name, repeat).name for name in ("round1", "cold", "warm")]
    if all((out / "records" / f"{name}.json").exists() for name in names):  # measured: its studies may be gone
        return [json.loads((out / "records" / f"{name}.json").read_text()) for name in names]
    studies = out / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    base = spec_tables(QualityRun(data, STRATEGY, repeat), scale)
    if epochs is not None:  # the tiny run of the test suite
        base = with_study(base, epochs=epochs)
    first = Study(data, "round1", repeat)
    records = [measure(first, studies, out, scale, trials, with_space(base, NARROW), [])]
    best = best_trial(load_study(first.name, None, studies).study)
    changed = widened_entries(best)
    # nothing flagged: round 2 takes the demo spec's ranges, still a superset of round 1's
    space = {**NARROW, **(changed or demo_entries(NARROW))}
    records[0]["widened"] = {key: toml_value(space[key]) for key in NARROW if space[key] != NARROW[key]}
    records[0]["edge_flagged"] = sorted(changed)
    atomic_write_text(out / "records" / f"{first.name}.json", json.dumps(records[0], indent=1))
    second = with_space(base, space)
    records.append(measure(Study(data, "cold", repeat), studies, out, scale, trials, second, []))
    records.append(measure(Study(data, "warm", repeat), studies, out, scale, trials, second,
                           ["--from", first.name]))
    return records


def test_after(record: dict, own: int) -> float | None:
    """Held-out test lwlrap of the study's best after ``own`` of its own trials (None: nothing finished yet)."""
    held = [i["test"] for i in record["incumbents"] if i["own_trials"] <= own]
    return held[-1] if held else None


def trials_to_reach(record: dict, target: float) -> int | None:
    """The fewest own trials after which the study's held-out best is at least ``target`` (None: never). The best
    after k trials is the last incumbent by then: an earlier one that scored higher on test was displaced."""
    counts = sorted({i["own_trials"] for i in record["incumbents"]})
    return next((k for k in counts if test_after(record, k) >= target - 1e-12), None)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]" if values else "—"


def table(records: list[dict], trials: int) -> str:
    lines = [f"| data | repeats | round 1 ({trials} trials) | cold round 2, {trials} trials | warm round 2, 0 own trials "
             f"| warm, {trials // 2} | warm, {trials} | warm's own trials to reach cold's {trials}-trial best "
             "(median; per repeat) | round 1 edges flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for data in sorted({r["data"] for r in records}):
        chains = {}
        for record in records:
            if record["data"] == data:
                chains.setdefault(record["repeat"], {})[record["round"]] = record
        chains = {repeat: chain for repeat, chain in sorted(chains.items()) if set(chain) == set(ROUNDS)}
        if not chains:
            continue
        reach = [trials_to_reach(c["warm"], test_after(c["cold"], trials)) for c in chains.values()]
        # a repeat where warm never reached cold's best counts as more than the budget
        ranked = [trials + 1 if r is None else r for r in reach]
        median = statistics.median(ranked)
        flagged = "; ".join(", ".join(c["round1"].get("edge_flagged", [])) or "none" for c in chains.values())
        lines.append(
            f"| {data} | {len(chains)} | {summary([test_after(c['round1'], trials) for c in chains.values()])} "
            f"| {summary([test_after(c['cold'], trials) for c in chains.values()])} "
            f"| {summary([v for c in chains.values() if (v := test_after(c['warm'], 0)) is not None])} "
            f"| {summary([test_after(c['warm'], trials // 2) for c in chains.values()])} "
            f"| {summary([test_after(c['warm'], trials) for c in chains.values()])} "
            f"| {'never' if median > trials else f'{median:g}'}; "
            f"{', '.join('never' if r is None else str(r) for r in reach)} | {flagged} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "sampled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30, help="own trials of every round")
    parser.add_argument("--epochs", type=int, help="trial budget (default: ours-10ep's 10 epochs)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the built-in data sets")
    parser.add_argument("--jobs", type=int, default=2, help="(data set, repeat) chains run side by side")
    parser.add_argument("--out", type=Path, default=REPO / "bench-rounds")
    parser.add_argument("--table", action="store_true", help="the table of the records in --out; run nothing")
    args = parser.parse_args()
    if not args.table:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for data in args.data:
            ensure_builtin(data, scale=args.scale)
        chains = [(data, repeat) for repeat in range(args.repeats) for data in args.data]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda chain: measure_chain(*chain, args.out, args.scale, args.trials, args.epochs), chains))
    records = [json.loads(path.read_text()) for path in sorted((args.out / "records").glob("rounds-*.json"))]
    records = [r for r in records if r["data"] in args.data]
    if not records:
        sys.exit(f"error: {args.out / 'records'}: no records of {', '.join(args.data)} (run the benchmark first)")
    print(table(records, args.trials))


if __name__ == "__main__":
    main()
