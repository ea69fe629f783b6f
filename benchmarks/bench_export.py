"""From study to submission: which export recipe scores best on held-out test clips, at what cost.

    python -m benchmarks.bench_export --from bench-quality --jobs 2 --out bench-export
    python -m benchmarks.bench_export --out bench-export --table      # the table from the records

For finished studies of the search-quality benchmark (``--from``: its ``--out`` folder; by default its ``ours``
studies of repeats 0 and 1 on every set found), every recipe of ``search.kaggle.recipes.RECIPES`` (but
``cv-folds``: those studies do not cross-validate) is exported through ``python -m search.best --export --recipe NAME`` (one torch thread; the recipes that train the trials'
configs as they trained take their kept weights with ``--reuse-checkpoints``: CPU training is deterministic, so
that is what a retrain gives), the generated kernel.py runs as its own process on the set's held-out test clips,
and its submission is scored against test_labels.csv. Per recipe it records the held-out test lwlrap, the
kernel's projected Kaggle time (measured on this box's CPU, for Kaggle's 3,361 clips) and the export's own
compute (epochs the recipe trains, wall time). ``--rescore K`` exports each recipe of one trial again with
``search.best --rescore K`` (the top K trials trained on another validation split, the best mean exported; no
kept weights, as the chosen trial's may not be kept), so its row shows what re-scoring buys over the study's
own best and what it costs. Every export's record is kept in ``--out``: an interrupted run resumes. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import REPO, STUDIES, read_spec
from search.kaggle.export import run_kernel
from search.kaggle.recipes import RECIPES
from search.kaggle.score import score_submission
from search.spec import load_spec
from trainer import atomic_write_text, ensure_builtin

FAT2019_KERNEL_S = load_spec(STUDIES / "fat2019.toml").kernel.budget_s  # the Kaggle kernel's hour


@dataclass(frozen=True)
class Export:
    studies: Path  # the folder holding the study's spec and database
    study: str
    recipe: str
    rescore: int | None = None  # search.best --rescore K

    @property
    def name(self) -> str:
        return f"{self.study}-{self.recipe}" + (f"-rescore{self.rescore}" if self.rescore else "")

    def data(self) -> tuple[str, float]:
        spec = read_spec(self.studies / f"{self.study}.toml")["study"]
        return spec["data"], float(spec.get("data_scale", 1.0))


def measure(job: Export, out: Path) -> dict:
    """Export ``job.recipe`` of ``job.study``, run its kernel on the held-out test clips, score it (cached)."""
    record_path = out / "records" / f"{job.name}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    data, scale = job.data()
    data_dir = ensure_builtin(data, scale=scale)
    recipe = RECIPES[job.recipe]
    log = out / "logs" / f"{job.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        started = time.perf_counter()
        with open(log, "w", encoding="utf-8") as stream:
            subprocess.run([sys.executable, "-m", "search.best", "--study", job.study, "--studies-dir",
                            str(job.studies), "--export", "--recipe", job.recipe, "--threads", "1", "--out",
                            str(export), *(["--rescore", str(job.rescore)] if job.rescore else
                                           ["--reuse-checkpoints"] if recipe.as_trained else [])],
                           cwd=REPO, stdout=stream, stderr=subprocess.STDOUT, check=True)
        export_s = time.perf_counter() - started
        exported = json.loads((export / "export.json").read_text())
        members = json.loads((export / "config.json").read_text())["members"]
        submission = Path(tmp) / "submission.csv"
        run_kernel(export, data_dir / "test", data_dir / "sample_submission.csv", submission, device="cpu")
        test = score_submission(submission, data_dir / "test_labels.csv").lwlrap
    rescored = exported.get("rescore") or {}
    record = {"study": job.study, "data": data, "recipe": job.recipe, "rescore": job.rescore, "test_lwlrap": test,
              "models": len(members), "trials": sorted({m["trial"] for m in members}),
              # what the recipe trains (a reuse of kept weights trained them already, in the study)
              "recipe_epochs": sum(m["train_config"]["optim"]["epochs"] for m in members),
              "trained_epochs": exported["trained_epochs"], "export_s": round(export_s, 1),
              # the re-scores' trainings (cached in the study's folder: a second recipe of one study reuses them)
              "rescore_epochs": sum(len(r["rescores"]) * r["epochs_each"] for r in rescored.values()),
              "rescore_trials": {n: r["mean"] for n, r in rescored.items()},
              "val_lwlrap": [m["val_lwlrap"] for m in members], "validation": exported["validation"],
              "projected_kernel_s": (exported.get("inference") or {}).get("projected_kaggle_seconds")}
    atomic_write_text(record_path, json.dumps(record, indent=1))
    print(f"{job.name}: test lwlrap {test:.4f}, {record['models']} model(s), {record['recipe_epochs']} epochs, "
          f"export {export_s:.0f} s", flush=True)
    return record


def _cell(values: list[float], digits: int = 4) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def table(records: list[dict]) -> str:
    lines = ["| data | recipe | studies | held-out test lwlrap | vs single (median) | models | epochs trained | "
             "export wall | kernel, projected for Kaggle (this CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    single = {r["study"]: r["test_lwlrap"] for r in records if r["recipe"] == "single" and not r.get("rescore")}
    variants = sorted({(r["recipe"], r.get("rescore") or 0) for r in records},
                      key=lambda v: (list(RECIPES).index(v[0]), v[1]))
    for data in sorted({r["data"] for r in records}):
        for recipe, rescore in variants:
            group = [r for r in records if r["data"] == data and (r["recipe"], r.get("rescore") or 0) == (recipe, rescore)]
            if not group:
                continue
            gains = [r["test_lwlrap"] - single[r["study"]] for r in group if r["study"] in single]
            kernel = [r["projected_kernel_s"] for r in group if r["projected_kernel_s"] is not None]
            name = f"{recipe} + rescore {rescore}" if rescore else recipe
            lines.append(
                f"| {data} | {name} | {len(group)} | {_cell([r['test_lwlrap'] for r in group])} | "
                + (f"{statistics.median(gains):+.4f}" if gains else "—") + " | "
                + f"{statistics.median(r['models'] for r in group):.0f} | "
                + f"{statistics.median(r['recipe_epochs'] + r.get('rescore_epochs', 0) for r in group):.0f} | "
                + f"{statistics.median(r['export_s'] for r in group) / 60:.1f} min | "
                + (f"{statistics.median(kernel) / 60:.0f} min of {FAT2019_KERNEL_S / 60:.0f}" if kernel else "—")
                + " |")
    return "\n".join(lines)


def default_studies(source: Path) -> list[str]:
    """The search-quality benchmark's ``ours`` studies of repeats 0 and 1 (two per set) found in ``source``."""
    return sorted(path.stem for path in (source / "studies").glob("q-*-ours-r[01].db"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, default=REPO / "bench-quality",
                        help="the search-quality benchmark's --out folder (its studies/ are exported)")
    parser.add_argument("--studies", nargs="+", help="study names in --from/studies (default: its ours r0, r1)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES),
                        default=[name for name, recipe in RECIPES.items() if not recipe.trial_folds],
                        help="default: every recipe but those of a cross-validated study ([study] folds)")
    parser.add_argument("--rescore", type=int, metavar="K",
                        help="export through search.best --rescore K (the top K re-scored on another split)")
    parser.add_argument("--jobs", type=int, default=2, help="exports side by side (one torch thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-export")
    parser.add_argument("--table", action="store_true", help="the table of the records in --out; run nothing")
    args = parser.parse_args()
    if not args.table:
        studies = args.studies or default_studies(args.source)
        if not studies:
            sys.exit(f"error: {args.source / 'studies'}: no search-quality studies to export (run "
                     f"python -m benchmarks.bench_search_quality --out {args.source} first, or name them with --studies)")
        missing = [s for s in studies if not (args.source / "studies" / f"{s}.db").is_file()]
        if missing:
            sys.exit(f"error: {args.source / 'studies'}: no study {missing[0]!r} (expected {missing[0]}.db there)")
        refused = [r for r in args.recipes if args.rescore and RECIPES[r].ensemble is not None]
        if refused:
            sys.exit(f"error: --recipes {refused[0]}: an ensemble recipe selects from the whole study; --rescore "
                     f"chooses one trial")
        jobs = [Export(args.source / "studies", study, recipe, args.rescore)
                for study in studies for recipe in args.recipes]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: measure(job, args.out), jobs))
    records = [json.loads(path.read_text()) for path in sorted((args.out / "records").glob("*.json"))]
    if not records:
        sys.exit(f"error: {args.out / 'records'}: no records (run the benchmark first)")
    print(table([r for r in records if r["recipe"] in args.recipes]))


if __name__ == "__main__":
    main()
