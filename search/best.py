"""``python -m search.best --study NAME``: the study's top trials and best config; ``--export`` retrains it for Kaggle.

Only COMPLETE trials that satisfy the study's constraints (the Kaggle kernel time budget) are chosen. The
export retrains the chosen trial's exact config (optionally as a seed or fold ensemble), prints the
retrained validation lwlrap beside the one the trial reported, and writes the folder described in
``search.export``: weights, config.json, the generated kernel.py, dataset-metadata.json, SUBMIT.md.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.export import (ExportPlan, check_dataset_identity, measure_kernel, member_configs, record_inference,
                           retrain, write_export)
from search.kernel import KernelGenerationError
from search.spec import StudySpec, load_spec
from search.storage import StorageError, add_study_arguments, studies_dir
from search.study import (StudyNotFoundError, baseline_trial, best_trial, config_diff, is_feasible, load_study,
                          ranked_trials, resolve_data, trial_config)
from trainer import CheckpointError, ConfigError, DataError

TOP_N = 10


def choose_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial ``number`` (must be COMPLETE), else ``search.study.best_trial``: the best COMPLETE trial within
    the kernel-time budget."""
    if number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not trials:
            raise LookupError(f"--trial {number}: study {study.study_name!r} has no such trial "
                              f"(trials 0..{len(study.trials) - 1})")
        if trials[0].state != TrialState.COMPLETE:
            raise LookupError(f"--trial {number}: it is {trials[0].state.name}; only COMPLETE trials can be exported")
        return trials[0]
    best = best_trial(study)
    if best is None:
        ranked = ranked_trials(study)
        why = f"all {len(ranked)} COMPLETE trials exceed the kernel time budget" if ranked else "no trial has completed"
        raise LookupError(f"study {study.study_name!r}: nothing to export ({why})")
    return best


def describe_top(study: optuna.Study, top_n: int = TOP_N, spec: StudySpec | None = None) -> str:
    """The top trials (number, lwlrap, state, epochs, params differing from the baseline) and the best config."""
    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study)
    baseline = baseline_trial(trials)
    lines = [f"study {study.study_name}: {len(trials)} trials, {len(ranked)} complete, "
             f"{sum(not is_feasible(t) for t in ranked)} of them over the kernel time budget", "",
             f"{'trial':>5}  {'lwlrap':>7}  {'state':<20}  {'epochs':>6}  differs from the baseline in"]
    for trial in ranked[:top_n]:
        state = trial.state.name + ("" if is_feasible(trial) else ", infeasible")
        if baseline is None or trial.number == baseline.number:
            changes = "(baseline)" if baseline is not None else ""
        else:
            diff, _ = config_diff(baseline, trial)
            changes = ", ".join(f"{k}={_fmt(new)}" for k, (_, new) in diff.items()) or "(nothing)"
        lines.append(f"{trial.number:>5}  {trial.value:>7.4f}  {state:<20}  "
                     f"{trial.user_attrs.get('epochs_run', '?'):>6}  {changes}")
    try:
        best = choose_trial(study)
    except LookupError as exc:
        return "\n".join(lines + ["", str(exc)])
    lines += ["", f"best feasible trial: {best.number} (lwlrap {best.value:.4f}); its config:"]
    try:
        lines.append(trial_config(best, spec).to_json())
    except (LookupError, ConfigError) as exc:
        lines.append(f"({exc})")
    return "\n".join(lines)


def find_study_spec(study: str, studies: Path) -> StudySpec | None:
    """The study's spec (``<studies>/<study>.toml``) when it exists."""
    path = Path(study) if study.endswith(".toml") else studies / f"{study}.toml"
    return load_spec(path) if path.is_file() else None


def export_trial(study: optuna.Study, trial: FrozenTrial, data_dir: Path, out: Path, *,
                 spec: StudySpec | None = None, epochs: int | None = None,
                 seeds: int = 1, folds: int | None = None, full_curated: bool = False, pooling: str = "mean",
                 kaggle_user: str | None = None, dataset_slug: str | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """Retrain ``trial``'s config into ``out`` (see the module docstring); returns export.json's record."""
    slug = dataset_slug or _slug(f"fat2019-{study.study_name}")
    check_dataset_identity(kaggle_user, slug)
    base = trial_config(trial, spec)
    configs = member_configs(base, seeds=seeds, folds=folds, full_curated=full_curated, epochs=epochs)
    print(f"exporting trial {trial.number} of study {study.study_name} (reported lwlrap {trial.value:.4f}): "
          f"{len(configs)} model(s) on {data_dir}", file=sys.stderr)
    # CPU results depend on the torch thread count: retrain with the trial's own to reproduce its numbers.
    threads = threads or trial.user_attrs.get("threads")
    results = retrain(configs, data_dir, out.parent / f"{out.name}-runs", threads=threads)
    same_as_trial = configs[0] == base
    source = {"study": study.study_name, "trial": trial.number, "trial_lwlrap": trial.value,
              "retrained_lwlrap": results[0].best_lwlrap, "retrained_config_equals_trial": same_as_trial,
              "trial_kernel_time_s": trial.user_attrs.get("kernel_time_s"), "data": str(data_dir)}
    plan = ExportPlan(configs=configs, pooling=pooling, kaggle_user=kaggle_user, dataset_slug=slug,
                      title=f"FAT2019 {study.study_name} trial {trial.number}"[:50], source=source)
    record = write_export(out, plan, results)
    print(f"timing the generated kernel.py on test clips of {data_dir}", file=sys.stderr)
    timing = measure_kernel(out, data_dir)
    if timing is not None:
        record_inference(out, timing)
        record["inference"] = timing

    for member, config in zip(record["models"], configs):
        note = " (validation clips were trained on: not a held-out score)" if config.data.full_curated else ""
        print(f"  {member['file']}: validation lwlrap {member['val_lwlrap']:.4f} at epoch {member['epoch']}{note}")
    retrained = results[0].best_lwlrap
    if same_as_trial:
        trial_threads = trial.user_attrs.get("threads")
        same_threads = trial_threads is not None and trial_threads == threads
        why = (f"equal on CPU when retrained with the trial's {trial_threads} torch thread(s), as here; GPU kernels "
               f"are not bit-reproducible" if same_threads else
               f"trained with {threads or 'default'} torch threads, the trial with {trial_threads or 'unknown'}: "
               f"CPU numbers depend on the thread count")
        print(f"retrained lwlrap {retrained:.4f} vs trial's {trial.value:.4f} (difference {retrained - trial.value:+.4f}; "
              f"{why})")
    else:
        print(f"retrained lwlrap {retrained:.4f} (first model) vs trial's {trial.value:.4f}: the configs differ "
              f"({', '.join(sorted(configs[0].diff(base)))}), so the numbers need not match")
    if timing is not None:
        print(f"kernel inference: {timing['seconds_per_clip'] * 1000:.1f} ms/clip on {timing['device']} -> "
              f"~{timing['projected_kaggle_seconds'] / 60:.1f} min for Kaggle's {timing['projected_for_clips']} clips")
    print(f"export written to {out}; next steps: {out / 'SUBMIT.md'}")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.best", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--data", help="FAT2019 data folder or 'demo' (default: as the study's spec says)")
    parser.add_argument("--top", type=int, default=TOP_N, help="how many trials to list")
    parser.add_argument("--export", action="store_true", help="retrain the chosen trial and write the Kaggle folder")
    parser.add_argument("--out", help="export folder (default studies/<study>/export)")
    parser.add_argument("--trial", type=int, help="trial number to export (default: best feasible COMPLETE)")
    parser.add_argument("--epochs", type=int, help="retrain for this many epochs instead of the trial's")
    ensemble = parser.add_mutually_exclusive_group()
    ensemble.add_argument("--seeds", type=int, default=1, help="ensemble of K models with seeds seed..seed+K-1")
    ensemble.add_argument("--folds", type=int, help="ensemble of K models, one per held-out curated fold")
    parser.add_argument("--full-curated", action="store_true", help="also train on the validation clips")
    parser.add_argument("--pooling", choices=("mean", "geometric"), default="mean",
                        help="how the kernel averages an ensemble's probabilities")
    parser.add_argument("--threads", type=int, help="torch CPU threads for retraining (default: the trial's own, "
                                                    "so CPU numbers reproduce)")
    parser.add_argument("--kaggle-user", help="your Kaggle user name (dataset id <user>/<slug>)")
    parser.add_argument("--dataset-slug", help="Kaggle dataset slug (default fat2019-<study>)")
    args = parser.parse_args(argv)
    studies = studies_dir(args.studies_dir)
    try:
        spec = find_study_spec(args.study, studies)
        name = spec.name if spec is not None else args.study
        study = load_study(name, args.storage, studies).study
        print(describe_top(study, args.top, spec))
        if not args.export:
            return 0
        trial = choose_trial(study, args.trial)
        if not is_feasible(trial):
            print(f"warning: trial {trial.number} exceeds the kernel time budget; exporting it as asked",
                  file=sys.stderr)
        out = Path(args.out) if args.out else studies / name / "export"
        export_trial(study, trial, resolve_data(spec, args.data), out, spec=spec, epochs=args.epochs,
                     seeds=args.seeds, folds=args.folds, full_curated=args.full_curated, pooling=args.pooling,
                     kaggle_user=args.kaggle_user, dataset_slug=args.dataset_slug, threads=args.threads)
    except (StudyNotFoundError, LookupError, ConfigError, DataError, KernelGenerationError, StorageError,
            CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-")
    return slug if len(slug) >= 5 else f"{slug}-model"


if __name__ == "__main__":
    sys.exit(main())
