"""``python -m search.best --study NAME``: the study's top trials and best config; ``--export`` writes it for Kaggle.

Only COMPLETE trials that satisfy the study's constraints (the Kaggle kernel time budget) are chosen.
``--ensemble K`` selects a weighted ensemble from the whole study instead (``search.kaggle.ensemble``: greedy
selection on the stored validation predictions within the kernel budget) and prints the path, the members
and the gain over the single best trial. ``--rescore K`` trains the top K trials again on another validation
split and exports the best by the mean score instead of the study's best (``search.kaggle.rescore``). The export
retrains each member's exact config (the single trial optionally as a seed or fold ensemble), or with
``--reuse-checkpoints`` takes the trials' own best.pth, prints the validation lwlrap beside the one each trial
reported, and writes the folder described in ``search.kaggle.export``: weights, config.json, the generated
kernel.py, dataset-metadata.json, SUBMIT.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import optuna

from search._cli import add_data_argument, add_study_arguments, check_writable_folder, run_command
from search.kaggle.ensemble import select_from_study
from search.kaggle.ensemble_report import TEST_LABELS, describe, held_out_or_reason
from search.kaggle.export import check_dataset_identity, write_record
from search.kaggle.kernel_main import POOLINGS
from search.kaggle.recipes import DEFAULT_RECIPES, RECIPES, Recipe, default_recipe, recipe_named
from search.kaggle.rescore import describe_rescored, rescore_top
from search.kaggle.study_export import ExportOptions, choose_trial, export_ensemble, export_trial
from search.spec import StudySpec
from search.study.folds import cv_summary
from search.study.locate import locate_args
from search.study.record import baseline_trial, config_diff, is_feasible, ranked_trials, resolve_data, trial_config
from search.views.format import format_value
from trainer import ConfigError

TOP_N = 10
# A valid slug to check --kaggle-user with before the study is read; the real default slug (fat2019-<study>) is
# checked with it at export.
EXAMPLE_SLUG = "fat2019-study"


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
            changes = ", ".join(f"{k}={format_value(new, 4)}" for k, (_, new) in diff.items()) or "(nothing)"
        lines.append(f"{trial.number:>5}  {trial.value:>7.4f}  {state:<20}  "
                     f"{trial.user_attrs.get('epochs_run', '?'):>6}  {changes}")
        if (cv := cv_summary(trial.user_attrs)) is not None:  # a cross-validated trial: its folds under it
            lines.append(f"{'':>5}  {cv}")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.best", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    add_data_argument(parser)
    parser.add_argument("--top", type=int, default=TOP_N, help="how many trials to list")
    parser.add_argument("--ensemble", type=int, metavar="K", help="greedy ensemble selection over the study's stored "
                        "validation predictions: K rounds with replacement, within the kernel time budget")
    parser.add_argument("--max-kernel-s", type=float, help="kernel time budget for --ensemble in seconds "
                        "(default: the spec's [kernel] budget_s x safety)")
    parser.add_argument("--bags", type=int, default=1, help="--ensemble: average this many selections, each over a "
                        "random half of the trials (against overfitting the validation split)")
    parser.add_argument("--export", action="store_true", help="write the Kaggle folder for the chosen trial or ensemble")
    parser.add_argument("--recipe", choices=list(RECIPES), metavar="NAME",
                        help=f"what --export trains: {', '.join(RECIPES)} (default: the first of "
                             f"{', '.join(DEFAULT_RECIPES)} that fits the kernel budget, measured best on held-out "
                             f"clips; explicit --epochs/--folds/--seeds/--full-curated/--ensemble/"
                             f"--reuse-checkpoints export exactly what they say instead)")
    parser.add_argument("--reuse-checkpoints", action="store_true", help="export the trials' own best.pth instead of "
                        "retraining (with --ensemble: selects only among trials whose weights are kept)")
    parser.add_argument("--out", help="export folder (default studies/<study>/export)")
    parser.add_argument("--trial", type=int, help="trial number to export (default: best feasible COMPLETE)")
    parser.add_argument("--epochs", type=int, help="retrain for this many epochs instead of the trial's")
    parser.add_argument("--rescore", type=int, metavar="K", help="train the top K trials' configs again on another "
                        "validation split and choose by the mean score (K trainings; against the winner's curse)")
    parser.add_argument("--rescore-splits", type=int, default=1, metavar="N",
                        help="--rescore: other validation splits per trial (default 1)")
    repeats = parser.add_mutually_exclusive_group()
    repeats.add_argument("--seeds", type=int, default=1, help="ensemble of K models with seeds seed..seed+K-1")
    repeats.add_argument("--folds", type=int, help="ensemble of K models, one per held-out curated fold")
    parser.add_argument("--full-curated", action="store_true", help="also train on the validation clips")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="how the ensemble's probabilities are averaged (selection and kernel)")
    parser.add_argument("--threads", type=int, help="torch CPU threads for retraining (default: the trial's own, "
                                                    "so CPU numbers reproduce)")
    parser.add_argument("--kaggle-user", help="your Kaggle user name (dataset id <user>/<slug>)")
    parser.add_argument("--dataset-slug", help="Kaggle dataset slug (default fat2019-<study>)")
    args = parser.parse_args(argv)
    return run_command(lambda: _best(args), writes={"--out": args.out, "--studies-dir": args.studies_dir},
                       reads={"--data": args.data})


def _best(args: argparse.Namespace) -> int:
    recipe = _recipe(args)
    default = recipe is None and args.export and not _explicit_flags(args)  # chosen once the trial is known
    options = _apply(args, recipe)
    _check_flags(args)
    options.check()
    if args.kaggle_user is not None or args.dataset_slug is not None:  # a typo costs nothing: before the listing
        check_dataset_identity(args.kaggle_user, args.dataset_slug or EXAMPLE_SLUG)
    location = locate_args(args)
    spec = location.spec
    handle = location.open()
    study = handle.study
    files = location.reader_files(handle)
    trial = choose_trial(study, args.trial) if args.trial is not None else None  # a wrong --trial: one line
    out = Path(args.out) if args.out else location.folder / "export"
    if args.export:  # a read-only --out is refused before the listing and any training
        check_writable_folder(out)
        if not args.reuse_checkpoints:
            check_writable_folder(out.parent)  # the retrained members' runs go beside it: <out>-runs
    print(describe_top(study, args.top, spec))
    rescored = None
    if args.rescore is not None:
        rescored = rescore_top(study, location.folder, resolve_data(spec, args.data), args.rescore, spec=spec,
                               splits=args.rescore_splits, threads=args.threads)
        print("\n" + describe_rescored(rescored))
        trial = rescored[0].trial
    if args.ensemble is not None:
        data_dir = resolve_data(spec, args.data)
        selection = select_from_study(study, files, data_dir, spec=spec, rounds=args.ensemble,
                                      max_kernel_s=args.max_kernel_s, pooling=args.pooling, bags=args.bags,
                                      require_weights=args.reuse_checkpoints)
        if (data_dir / TEST_LABELS).is_file():
            print(f"scoring the ensemble and the single best trial on the held-out clips of {TEST_LABELS}",
                  file=sys.stderr)
        print("\n" + "\n".join(describe(selection, held_out_or_reason(selection, files, data_dir))))
        if args.export:
            record = export_ensemble(study, selection, data_dir, out, options, files=files)
            _record_recipe(out, record, recipe, args)
        return 0
    if not args.export:
        return 0
    trial = trial or choose_trial(study)
    if default:
        recipe, why = default_recipe(trial, spec.kernel if spec is not None else None)
        print(f"recipe {recipe.name} (the default: {why}): {recipe.summary}; --recipe NAME for another",
              file=sys.stderr)
        options = _apply(args, recipe)
    if not is_feasible(trial):
        print(f"warning: trial {trial.number} exceeds the kernel time budget; exporting it as asked",
              file=sys.stderr)
    record = export_trial(study, trial, resolve_data(spec, args.data), out, options, spec=spec, files=files,
                          seeds=args.seeds, folds=args.folds,
                          asked=f"--recipe {recipe.name}" if recipe is not None else None)
    if rescored is not None:
        record["rescore"] = {str(r.trial.number): {"trial_lwlrap": r.trial.value, "rescores": list(r.rescores),
                                                   "mean": r.score, "epochs_each": r.epochs} for r in rescored}
    _record_recipe(out, record, recipe, args)
    return 0


def _explicit_flags(args: argparse.Namespace) -> list[str]:
    """The export flags that say what to train, as given (each one opts out of the default recipe)."""
    given = [("--epochs", args.epochs is not None), ("--seeds", args.seeds != 1), ("--folds", args.folds is not None),
             ("--full-curated", args.full_curated), ("--ensemble", args.ensemble is not None),
             ("--reuse-checkpoints", args.reuse_checkpoints)]
    return [flag for flag, present in given if present]


def _recipe(args: argparse.Namespace) -> Recipe | None:
    """``--recipe``, checked against the other flags (one line each); None without it (the explicit flags decide,
    or the default is chosen once the trial is known)."""
    explicit = _explicit_flags(args)
    if args.recipe is None:
        return None
    recipe = recipe_named(args.recipe)
    if not args.export:
        raise ConfigError(f"--recipe {recipe.name} says what --export trains: add --export")
    conflicting = [f for f in explicit if not (f == "--reuse-checkpoints" and recipe.as_trained)]
    if conflicting:
        raise ConfigError(f"--recipe {recipe.name} decides what is trained; {conflicting[0]} too: choose one (the "
                          f"flags alone export exactly what they say)")
    if recipe.ensemble is not None and args.rescore is not None:
        raise ConfigError(f"--recipe {recipe.name} selects its members from the whole study; --rescore chooses one "
                          f"trial: choose one")
    if recipe.ensemble is not None and args.trial is not None:
        raise ConfigError(f"--recipe {recipe.name} selects its members from the whole study; --trial exports one "
                          f"trial's config: choose one")
    print(f"recipe {recipe.name}: {recipe.summary}", file=sys.stderr)
    return recipe


def _apply(args: argparse.Namespace, recipe: Recipe | None) -> ExportOptions:
    """The export options of ``recipe`` (the flags' own without one); sets the flags it decides."""
    if recipe is not None:
        args.ensemble, args.seeds, args.folds = recipe.ensemble, recipe.seeds, recipe.folds
        args.full_curated = recipe.full_curated
    return ExportOptions(args.pooling, args.reuse_checkpoints, args.epochs,
                         recipe.epochs_scale if recipe is not None else 1, args.full_curated, args.threads,
                         args.kaggle_user, args.dataset_slug, trial_folds=recipe is not None and recipe.trial_folds)


def _record_recipe(out: Path, record: dict, recipe: Recipe | None, args: argparse.Namespace) -> None:
    record["recipe"] = recipe.name if recipe is not None else {"flags": _explicit_flags(args)}
    write_record(out, record)


def _check_flags(args: argparse.Namespace) -> None:
    """Combinations that ask for two different things: one line each."""
    if args.rescore is not None and args.trial is not None:
        raise ConfigError(f"--rescore {args.rescore} chooses the trial among the top {args.rescore}; --trial "
                          f"{args.trial} names one: choose one")
    if args.rescore is None and args.rescore_splits != 1:
        raise ConfigError("--rescore-splits applies to --rescore K only")
    if args.ensemble is not None:
        for flag, given in (("--trial", args.trial is not None), ("--rescore", args.rescore is not None),
                            ("--seeds", args.seeds != 1),
                            ("--folds", args.folds is not None)):
            if given:
                raise ConfigError(f"--ensemble selects its members from the whole study; {flag} exports one trial's "
                                  f"config: choose one")
    else:
        for flag, given in (("--max-kernel-s", args.max_kernel_s is not None), ("--bags", args.bags != 1)):
            if given:
                raise ConfigError(f"{flag} applies to --ensemble K only")
    if args.reuse_checkpoints and (args.seeds != 1 or args.folds is not None):
        raise ConfigError("--reuse-checkpoints exports the trials' own weights; --seeds and --folds ask for "
                          "retraining: choose one")



if __name__ == "__main__":
    sys.exit(main())
