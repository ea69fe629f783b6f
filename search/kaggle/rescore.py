"""Re-scoring a study's top trials before one is called best (``python -m search.best --rescore K``).

A study's best is the maximum of many noisy validation scores, so it is biased upwards: the winner's curse of a
small validation split (FAT2019's curated split holds about 1,000 clips, the built-in sets' 240). Re-scoring
trains each of the top K feasible trials' exact configs once more on another validation split (another
``data.split_seed``, or the next fold where the trial trained on folds) with another seed, and ranks them by the
mean of the trial's own value and its re-scores. It costs K trainings at the trials' own epochs.

Re-scores are kept in ``studies/<study>/rescore.json`` (written atomically after each training) keyed by trial
and split, and their runs in ``studies/<study>/rescore-runs/<config digest>``, so an interrupted or repeated
``--rescore`` resumes instead of retraining.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import optuna
from optuna.trial import FrozenTrial

from search.kaggle.export import config_digest
from search.spec import StudySpec
from search.study.record import is_feasible, ranked_trials, trial_config
from trainer import ConfigError, TrainConfig, atomic_write_text, train_and_evaluate

RESCORE_FILE = "rescore.json"
RUNS_DIR = "rescore-runs"


@dataclass(frozen=True)
class Rescored:
    """A top trial with its re-scores; ``score`` (their mean with the trial's own value) is what ranks it."""

    trial: FrozenTrial
    rescores: tuple[float, ...]
    epochs: int  # of each re-score's training: what re-scoring this trial cost is len(rescores) x epochs

    @property
    def score(self) -> float:
        return fmean([self.trial.value, *self.rescores])


def rescore_config(config: TrainConfig, k: int) -> TrainConfig:
    """``config`` on its ``k``-th other validation split (k >= 1), with another seed: the next fold where it
    trains on folds, else another split seed. Nothing else changes, epochs included."""
    if k < 1:
        raise ValueError(f"re-score {k}: expected at least 1")
    data = config.data
    if data.n_folds is not None and data.val_fold is not None:
        if k >= data.n_folds:
            raise ConfigError(f"--rescore-splits {k + 1}: the trial's config has only data.n_folds={data.n_folds} "
                              f"folds to validate on")
        split = {"data.val_fold": (data.val_fold + k) % data.n_folds}
    else:
        split = {"data.split_seed": data.split_seed + k}
    return config.with_overrides({**split, "seed": config.seed + k}, source="--rescore")


def rescore_top(study: optuna.Study, folder: Path, data_dir: Path, top: int, *, spec: StudySpec | None = None,
                splits: int = 1, threads: int | None = None) -> list[Rescored]:
    """The top ``top`` feasible COMPLETE trials, each trained on ``splits`` other validation splits, ranked by
    their mean score (best first; a tie keeps the study's order). Re-scores found in ``folder/rescore.json`` for
    the same config are reused."""
    if top < 2:
        raise ConfigError(f"--rescore {top}: expected at least 2 trials to compare")
    if splits < 1:
        raise ConfigError(f"--rescore-splits {splits}: expected at least 1")
    candidates = [t for t in ranked_trials(study) if is_feasible(t)][:top]
    if not candidates:
        raise LookupError(f"study {study.study_name!r}: no feasible COMPLETE trial to re-score")
    store = folder / RESCORE_FILE
    kept = _read(store)
    rescored = []
    for trial in candidates:
        base = trial_config(trial, spec)
        scores = []
        for k in range(1, splits + 1):
            config = rescore_config(base, k)
            key, digest = f"{trial.number}/{k}", config_digest(config)
            entry = kept.get(key)
            if entry is None or entry.get("digest") != digest:
                print(f"re-scoring trial {trial.number} (lwlrap {trial.value:.4f}) on validation split {k} of "
                      f"{splits}: {config.optim.epochs} epochs", file=sys.stderr)
                result = train_and_evaluate(config, data_dir, workdir=folder / RUNS_DIR / digest,
                                            threads=threads or trial.user_attrs.get("threads"), progress=False)
                entry = {"digest": digest, "lwlrap": result.best_lwlrap, "trial_lwlrap": trial.value}
                kept[key] = entry
                atomic_write_text(store, json.dumps(kept, indent=1, sort_keys=True))
            scores.append(float(entry["lwlrap"]))
        rescored.append(Rescored(trial, tuple(scores), base.optim.epochs))
    return sorted(rescored, key=lambda r: r.score, reverse=True)  # sorted() is stable: ties keep the study's order


def describe_rescored(rescored: list[Rescored]) -> str:
    """The table ``--rescore`` prints: each trial's own value, its re-scores and their mean, the chosen first."""
    lines = [f"{'trial':>5}  {'lwlrap':>7}  {'re-scored':<20}  {'mean':>7}"]
    for item in rescored:
        again = ", ".join(f"{s:.4f}" for s in item.rescores)
        lines.append(f"{item.trial.number:>5}  {item.trial.value:>7.4f}  {again:<20}  {item.score:>7.4f}")
    chosen, first = rescored[0].trial, max(rescored, key=lambda r: r.trial.value).trial
    verdict = ("the study's best stays best" if chosen.number == first.number else
               f"trial {chosen.number} replaces the study's best, trial {first.number}")
    return "\n".join(lines + [f"chosen by the mean: trial {chosen.number} ({verdict})"])


def _read(store: Path) -> dict:
    if not store.is_file():
        return {}
    try:
        kept = json.loads(store.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{store}: not JSON ({exc}); delete it to re-score from scratch") from None
    if not isinstance(kept, dict):
        raise ConfigError(f"{store}: expected an object of re-scores; delete it to re-score from scratch")
    return kept
