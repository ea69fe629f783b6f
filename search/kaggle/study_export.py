"""Exporting a study's trial or ensemble for Kaggle: which trial, its members' weights (retrained or reused), the
folder ``search.kaggle.export`` writes, the kernel's timing and the printed comparison. ``search.best`` is its CLI; the
quickstart and the benchmarks call it too."""
from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.kaggle.ensemble import Selection
from search.kaggle.export import (
    ExportPlan,
    Member,
    TrainedMember,
    check_dataset_identity,
    check_reusable,
    measure_kernel,
    member_configs,
    retrain,
    retrain_config,
    reuse_checkpoints,
    write_export,
    write_record,
)
from search.kaggle.kernel_main import pool_probabilities
from search.kaggle.recipes import check_kernel_budget
from search.spec import StudySpec
from search.study.artifacts import TrialFiles
from search.study.folds import finished_folds
from search.study.record import best_trial, ranked_trials, trial_config
from trainer import ConfigError, TrainConfig, lwlrap


def choose_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial ``number`` (must be COMPLETE), else ``search.study.record.best_trial``: the best COMPLETE trial within
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


@dataclass(frozen=True)
class ExportOptions:
    """How an export gets its weights and names its Kaggle dataset (the CLI's export flags)."""

    pooling: str = "mean"
    reuse_checkpoints: bool = False  # the trials' own best.pth instead of retraining
    epochs: int | None = None
    epochs_scale: int = 1  # a recipe's: each model trains this many times its trial's epochs
    full_curated: bool = False
    threads: int | None = None  # torch threads for retraining (default: each trial's own)
    kaggle_user: str | None = None
    dataset_slug: str | None = None
    time_kernel: bool = True  # time kernel.py on a few test clips (a caller that runs it on all of them need not)
    trial_folds: bool = False  # a cross-validated trial's own fold models, as trained (the ``cv-folds`` recipe)

    def check(self) -> None:
        if self.reuse_checkpoints and (self.epochs is not None or self.full_curated or self.epochs_scale != 1):
            raise ConfigError("--reuse-checkpoints exports the trials' own weights; --epochs, --full-curated and "
                              "longer recipes ask for retraining: choose one")


def export_trial(study: optuna.Study, trial: FrozenTrial, data_dir: Path, out: Path, options: ExportOptions, *,
                 spec: StudySpec | None = None, files: TrialFiles | None = None, seeds: int = 1,
                 folds: int | None = None, asked: str | None = None) -> dict[str, Any]:
    """Export ``trial``'s config (optionally as a seed or fold ensemble) into ``out``; returns export.json's record.
    ``asked`` names what the user asked for in the kernel-budget refusal (a recipe, else the flag)."""
    base = trial_config(trial, spec)
    reuse = options.reuse_checkpoints or options.trial_folds
    if reuse and (seeds > 1 or folds is not None):
        raise ConfigError("--reuse-checkpoints exports the trial's own weights; --seeds and --folds ask for "
                          "retraining: choose one")
    cv_folds = finished_folds(trial.user_attrs) if reuse else None
    if options.trial_folds and cv_folds is None:
        raise ConfigError(f"trial {trial.number} did not cross-validate all its folds ([study] folds): it has no fold "
                          f"models to export as trained; choose another --recipe")
    if cv_folds is not None:  # a cross-validated trial's models are its fold models, as trained
        configs = member_configs(base, folds=cv_folds)
    else:
        configs = [base] if reuse else member_configs(
            base, seeds=seeds, folds=folds, full_curated=options.full_curated, epochs=options.epochs,
            epochs_scale=options.epochs_scale)
    asked = asked or (f"--folds {folds}" if folds is not None else f"--seeds {seeds}")
    check_kernel_budget(asked, len(configs), trial,
                        spec.kernel if spec is not None else None)
    members = [Member(c, 1.0, trial.number, trial.value, trial.user_attrs.get("threads"),
                      fold_of_trial=k if cv_folds is not None else None) for k, c in enumerate(configs)]
    if cv_folds is not None:
        options = dataclasses.replace(options, reuse_checkpoints=True)
        print(f"trial {trial.number} cross-validated all {cv_folds} folds: its {cv_folds} fold models are exported as "
              f"trained (out-of-fold lwlrap {trial.value:.4f}); nothing is retrained, saving {cv_folds} x "
              f"{base.optim.epochs} epochs", file=sys.stderr)
    origin = trial.user_attrs.get("from_study")
    inherited = (f", inherited from study {origin!r} (its trial {trial.user_attrs.get('from_trial')}): its files "
                 f"stay there") if origin else ""
    announce = (f"exporting trial {trial.number} of study {study.study_name} (reported lwlrap {trial.value:.4f}"
                f"{inherited}): {len(configs)} model(s) on {data_dir}")
    source = {"study": study.study_name, "trial": trial.number, "trial_lwlrap": trial.value,
              "retrained_config_equals_trial": configs[0] == base,
              "trial_kernel_time_s": trial.user_attrs.get("kernel_time_s"), "data": str(data_dir)}
    record, trained = _export(study, members, data_dir, out, options, files=files, source=source,
                              title=f"FAT2019 {study.study_name} trial {trial.number}", originals=[base] * len(configs),
                              announce=announce)
    if cv_folds is not None:
        record["cross_validation"] = {"folds": cv_folds, "oof_lwlrap": trial.value,
                                      "fold_lwlrap": trial.user_attrs.get("fold_lwlrap"),
                                      "epochs_saved": cv_folds * base.optim.epochs}
        write_record(out, record)
    elif not options.reuse_checkpoints:
        record["retrained_lwlrap"] = trained[0].val_lwlrap
        write_record(out, record)
    return record


def export_ensemble(study: optuna.Study, selection: Selection, data_dir: Path, out: Path, options: ExportOptions, *,
                    files: TrialFiles | None = None) -> dict[str, Any]:
    """Export the selected trials, each with its weight, into ``out``; returns export.json's record."""
    originals, members = [], []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for chosen in selection.members:
        # a cross-validated trial is its K fold models, each with 1/K of its weight (what its OOF score measured)
        folds = finished_folds(trials[chosen.number].user_attrs)
        parts = [(chosen.config, None)] if folds is None else [
            (config, k) for k, config in enumerate(member_configs(chosen.config, folds=folds))]
        for original, fold in parts:
            config = original if options.reuse_checkpoints else retrain_config(
                original, full_curated=options.full_curated, epochs=options.epochs, epochs_scale=options.epochs_scale)
            originals.append(original)
            members.append(Member(config, selection.weights[chosen.number] / len(parts), chosen.number, chosen.value,
                                  chosen.threads, fold_of_trial=fold if options.reuse_checkpoints else None))
    announce = (f"exporting an ensemble of {len(selection.members)} trial(s) of study {study.study_name} "
                f"({', '.join(f'{m.number} x{selection.weights[m.number]:.2f}' for m in selection.members)}) as "
                f"{len(members)} model(s) on {data_dir}")
    source = {"study": study.study_name, "data": str(data_dir), "ensemble": {
        "rounds": selection.rounds, "bags": selection.bags, "pooling": selection.pooling,
        "weights": {str(n): w for n, w in selection.weights.items()}, "val_lwlrap": selection.lwlrap,
        "single_trial": selection.single, "single_val_lwlrap": selection.single_lwlrap,
        "projected_kernel_s": selection.projected_s, "budget_s": selection.budget.limit_s,
        "validation_split": selection.pool.split}}
    record, _ = _export(study, members, data_dir, out, options, files=files, source=source,
                        title=f"FAT2019 {study.study_name} ensemble", originals=originals, announce=announce,
                        selection=selection)
    return record


def _export(study: optuna.Study, members: list[Member], data_dir: Path, out: Path, options: ExportOptions, *,
            files: TrialFiles | None, source: dict[str, Any], title: str, originals: list[TrainConfig], announce: str,
            selection: Selection | None = None) -> tuple[dict[str, Any], list[TrainedMember]]:
    """Weights (retrained or reused), the export folder, the kernel's measured time, and what to compare.
    Every mistake a user can make is refused before anything is trained or written."""
    options.check()
    slug = options.dataset_slug or _slug(f"fat2019-{study.study_name}")
    check_dataset_identity(options.kaggle_user, slug)
    if options.reuse_checkpoints:
        if files is None:
            raise ConfigError("--reuse-checkpoints needs the study's artifact store (--artifacts)")
        check_reusable(members, files)
    print(announce, file=sys.stderr)
    plan = ExportPlan(members=members, pooling=options.pooling, kaggle_user=options.kaggle_user, dataset_slug=slug,
                      title=title[:50], source={**source, "weights_from": "trial checkpoints"
                                                if options.reuse_checkpoints else "retrained"})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fat2019-export-") as staging:
        if options.reuse_checkpoints:
            trained = reuse_checkpoints(members, files, Path(staging))
        else:
            trained = retrain(members, data_dir, out.parent / f"{out.name}-runs", threads=options.threads)
        record = write_export(out, plan, trained)
        # the export's own compute, beside the kernel's: what a recipe costs to train
        record["trained_epochs"] = 0 if options.reuse_checkpoints else sum(m.config.optim.epochs for m in members)
        record["train_wall_s"] = round(time.perf_counter() - started, 1)
        exported = _pooled_validation(trained, selection) if selection is not None else None
    if exported is not None:
        record["ensemble"]["exported_val_lwlrap"] = exported
    record["validation"] = _validation(trained, selection)
    timing = None
    if options.time_kernel:
        print(f"timing the generated kernel.py (a separate process, the project not importable) on test clips of "
              f"{data_dir}", file=sys.stderr)
        timing = measure_kernel(out, data_dir)
        if timing is not None:
            record["inference"] = timing
    write_record(out, record)
    for entry, item, original in zip(record["members"], trained, originals):
        note = " (validation clips were trained on: not a held-out score)" if item.member.config.data.full_curated else ""
        origin = f"trial {item.member.trial}, " if item.member.trial is not None else ""
        print(f"  {entry['file']}: {origin}weight {entry['weight']:.3f}, validation lwlrap {entry['val_lwlrap']:.4f} "
              f"at epoch {entry['epoch']}{note}")
        if item.checkpoint != "trial" and item.member.trial_lwlrap is not None:
            print(_compare(item, original, options.threads))
    if exported is not None:
        print(f"exported ensemble: validation lwlrap {exported:.4f} (selection: {selection.lwlrap:.4f})")
    if not record["validation"]["held_out"]:
        print(f"no held-out validation: {record['validation']['why']}")
    if timing is not None:
        print(f"kernel inference: {timing['seconds_per_clip'] * 1000:.1f} ms/clip on {timing['device']} -> "
              f"~{timing['projected_kaggle_seconds'] / 60:.1f} min for Kaggle's {timing['projected_for_clips']} clips")
    print(f"export written to {out}; next steps: {out / 'SUBMIT.md'}")
    return record, trained


def _compare(item: TrainedMember, original: TrainConfig, threads: int | None) -> str:
    """The retrained lwlrap beside the trial's, and why they may differ."""
    member = item.member
    if member.config != original:
        return (f"retrained lwlrap {item.val_lwlrap:.4f} vs trial {member.trial}'s {member.trial_lwlrap:.4f}: the "
                f"configs differ ({', '.join(sorted(member.config.diff(original)))}), so the numbers need not match")
    used = threads or member.threads
    why = (f"equal on CPU when retrained with the trial's {member.threads} torch thread(s), as here; GPU kernels "
           f"are not bit-reproducible" if member.threads is not None and used == member.threads else
           f"trained with {used or 'default'} torch threads, the trial with {member.threads or 'unknown'}: "
           f"CPU numbers depend on the thread count")
    return (f"retrained lwlrap {item.val_lwlrap:.4f} vs trial {member.trial}'s {member.trial_lwlrap:.4f} "
            f"(difference {item.val_lwlrap - member.trial_lwlrap:+.4f}; {why})")


def _validation(trained: list[TrainedMember], selection: Selection | None) -> dict[str, Any]:
    """export.json's ``validation``: whether the exported models were validated on clips they did not train on,
    and if not, which number stands in (the search's own, measured as it trained them), never a made-up one."""
    if not any(item.member.config.data.full_curated for item in trained):
        return {"held_out": True}
    if selection is not None:
        stands_in, source = selection.lwlrap, "the selected ensemble's validation lwlrap, members as trained"
    else:
        stands_in, source = trained[0].member.trial_lwlrap, f"trial {trained[0].member.trial}'s reported lwlrap"
    text = (f"the models trained on the validation clips (full curated); {source}"
            + (f", {stands_in:.4f}, stands in" if stands_in is not None else ": none recorded"))
    return {"held_out": False, "stands_in": stands_in, "stands_in_source": source, "why": text}


def _pooled_validation(trained: list[TrainedMember], selection: Selection) -> float | None:
    """Validation lwlrap of the exported members pooled with their weights, when all were validated on the
    selection's split (not after --full-curated)."""
    probs = []
    for item in trained:
        if item.val_predictions is None or not item.val_predictions.is_file():
            return None
        with np.load(item.val_predictions) as stored:
            if str(stored["split"]) != selection.pool.split:
                return None
            probs.append(stored["probs"].astype(np.float64))
    pooled = pool_probabilities(probs, selection.pooling, [t.member.weight for t in trained])
    return lwlrap(selection.pool.targets, pooled)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-")
    return slug if len(slug) >= 5 else f"{slug}-model"
