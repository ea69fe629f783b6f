"""Greedy ensemble selection over a study's stored validation predictions, within the kernel-time budget.

Caruana et al. 2004, "Ensemble selection from libraries of models": start from nothing and, for K rounds,
add (with replacement) the trial whose validation probabilities most improve the pooled lwlrap; the
ensemble is the best-scoring prefix of that path and a trial's weight is how often it was picked. With
``bags`` > 1, each bag selects from a random half of the trials and the bags' ensembles are averaged
(their section on bagged selection, against overfitting the validation set).

Candidates are the COMPLETE feasible trials with a stored ``val_predictions.npz``; a trial without one is
skipped with a note, and predictions of different validation splits are refused. A member costs its
network's time (``model_cost``) plus, once per distinct log-mel setting, the features' (``feature_cost``);
a trial whose addition would push the projected kernel time over the budget is refused. Selection is
scored on the split it chose on, so its validation gain is optimistic: ``search.kaggle.ensemble_report`` adds the
held-out test gain where test labels exist.
"""
from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.kaggle.kernel_main import POOLINGS, pool_probabilities
from search.spec import Kernel, StudySpec
from search.study.artifacts import TrialFiles
from search.study.folds import finished_folds, weight_files
from search.study.inherit import inherited
from search.study.record import best_trial, is_feasible, trial_config
from trainer import (
    VAL_PREDICTIONS,
    ConfigError,
    DataError,
    TrainConfig,
    feature_cache_key,
    lwlrap,
    read_labelled_csv,
    split_identity,
)

BAG_FRACTION = 0.5  # share of the candidates each bag selects from (Caruana et al.'s p)
_GEOMETRIC_FLOOR = 1e-7


class EnsembleError(ValueError):
    """The study's trials cannot be combined as asked; the message names the trials, files or values."""


@dataclass(frozen=True)
class Candidate:
    """A COMPLETE feasible trial with stored validation predictions, and what running it in the kernel costs."""

    number: int
    value: float                # the lwlrap the trial reported
    lwlrap: float               # of its stored (float16) predictions
    probs: np.ndarray           # (validation clips, 80)
    config: TrainConfig
    feature_key: str            # its log-mel setting: members sharing one compute it once
    feature_cost: float | None  # s of log-mel per s of audio; None when only the total is known
    model_cost: float | None    # s of network per s of audio (the total inference cost when not split)
    threads: int | None


@dataclass(frozen=True)
class Pool:
    """The candidates of a study on one validation split, best first, with the notes on skipped trials."""

    candidates: list[Candidate]
    fnames: list[str]
    split: str
    targets: np.ndarray
    notes: list[str] = field(default_factory=list)

    def by_number(self) -> dict[int, Candidate]:
        return {c.number: c for c in self.candidates}


@dataclass(frozen=True)
class Budget:
    """Projected kernel time = test audio seconds x (each distinct log-mel setting's cost + every member's
    network cost); ``limit_s`` None = no limit. A member picked twice runs once."""

    test_audio_s: float | None
    limit_s: float | None

    def projected_s(self, members: Iterable[Candidate]) -> float | None:
        if self.test_audio_s is None:
            return None
        features: dict[str, float] = {}
        network = 0.0
        for member in members:
            if member.model_cost is None:
                return None
            if member.feature_cost is not None:
                features[member.feature_key] = max(features.get(member.feature_key, 0.0), member.feature_cost)
            network += member.model_cost
        return self.test_audio_s * (sum(features.values()) + network)

    def fits(self, members: Iterable[Candidate]) -> bool:
        if self.limit_s is None:
            return True
        projected = self.projected_s(members)
        return projected is not None and projected <= self.limit_s


def budget_for(kernel: Kernel | None, max_kernel_s: float | None = None) -> Budget:
    """``--max-kernel-s``, else the spec's ``budget_s * safety``; the spec's [kernel] gives the test audio."""
    if max_kernel_s is not None and max_kernel_s <= 0:
        raise ConfigError(f"--max-kernel-s {max_kernel_s:g}: expected a positive number of seconds")
    if kernel is None:
        if max_kernel_s is not None:
            raise ConfigError("--max-kernel-s needs the study spec's [kernel] test_audio_s (the test set's seconds of "
                              "audio) to project kernel time; add a [kernel] section to the spec")
        return Budget(None, None)
    return Budget(kernel.test_audio_s, max_kernel_s if max_kernel_s is not None else kernel.budget_s * kernel.safety)


@dataclass(frozen=True)
class Step:
    """One round of greedy selection: the trial added and the ensemble's validation lwlrap after it."""

    bag: int
    round: int
    trial: int
    lwlrap: float
    members: int                # distinct trials so far
    projected_s: float | None


@dataclass(frozen=True)
class Selection:
    """The chosen ensemble: trial -> weight (summing to 1, largest first), its validation lwlrap, the path."""

    pool: Pool
    weights: dict[int, float]
    lwlrap: float
    single: int                 # the study's best trial, the baseline of the comparison
    single_lwlrap: float        # its stored predictions' lwlrap
    steps: list[Step]
    best_round: list[int]       # per bag: the round whose prefix was kept
    projected_s: float | None
    budget: Budget
    pooling: str
    rounds: int
    bags: int
    notes: list[str]

    @property
    def members(self) -> list[Candidate]:
        candidates = self.pool.by_number()
        return [candidates[n] for n in self.weights]

    def probabilities(self) -> np.ndarray:
        return pool_probabilities([m.probs for m in self.members], self.pooling, list(self.weights.values()))


# -- candidates ---------------------------------------------------------------------------------------
def load_candidates(study: optuna.Study, files: TrialFiles, val_targets: Callable[[list[str], str], np.ndarray], *,
                    spec: StudySpec | None = None, require_weights: bool = False) -> Pool:
    """The COMPLETE feasible trials with stored predictions; ``val_targets(fnames, split)`` gives the split's
    labels (``targets_from_data``). ``require_weights`` keeps only trials whose best.pth is still stored."""
    notes: list[str] = []
    loaded: list[tuple[FrozenTrial, dict[str, np.ndarray]]] = []
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    infeasible = [t.number for t in complete if not is_feasible(t)]
    if infeasible:
        notes.append(f"{len(infeasible)} COMPLETE trial(s) over the kernel time budget not considered: "
                     f"{_numbers(infeasible)}")
    no_weights = []
    with tempfile.TemporaryDirectory(prefix="fat2019-ensemble-") as tmp:
        for trial in sorted((t for t in complete if is_feasible(t)), key=lambda t: t.number):
            if require_weights and not all(files.has(trial.number, name) for name in weight_files(trial.user_attrs)):
                no_weights.append(trial.number)
                continue
            folder = Path(tmp) / str(trial.number)
            folder.mkdir()
            path = files.pull(trial.number, VAL_PREDICTIONS, folder)
            if path is None:
                notes.append(f"trial {trial.number}: no stored validation predictions ({VAL_PREDICTIONS}); skipped")
                continue
            try:
                with np.load(path) as stored:
                    loaded.append((trial, {k: stored[k] for k in ("probs", "fnames", "split")}))
            except (OSError, ValueError, KeyError) as exc:
                notes.append(f"trial {trial.number}: unreadable {VAL_PREDICTIONS} ({exc}); skipped")
    if no_weights:
        notes.append(f"--reuse-checkpoints: {len(no_weights)} trial(s) whose best.pth checkpoint retention deleted "
                     f"not considered: {_numbers(no_weights)}")
    if not loaded:
        raise EnsembleError(f"study {study.study_name!r}: no COMPLETE feasible trial has stored validation predictions "
                            f"to select from" + (f" ({'; '.join(notes)})" if notes else ""))
    own_splits = {str(stored["split"]) for trial, stored in loaded if not inherited(trial)}
    elsewhere = [trial.number for trial, stored in loaded if inherited(trial) and own_splits
                 and str(stored["split"]) not in own_splits]
    if elsewhere:  # an earlier round on another data set or split: its predictions are of other clips
        notes.append(f"{len(elsewhere)} inherited trial(s) validated on another split than this study's (another "
                     f"data set, split seed or fraction) left out: {_numbers(elsewhere)}")
        loaded = [(trial, stored) for trial, stored in loaded if trial.number not in elsewhere]
    splits: dict[str, list[int]] = {}
    for trial, stored in loaded:
        splits.setdefault(str(stored["split"]), []).append(trial.number)
    if len(splits) > 1:
        listing = "; ".join(f"split {s}: trials {_numbers(n)}" for s, n in splits.items())
        raise EnsembleError(f"study {study.study_name!r}: trials were validated on different splits ({listing}); "
                            f"their predictions cannot be combined (data.split_seed, val_fraction or n_folds differ)")
    split = next(iter(splits))
    fnames = [str(f) for f in loaded[0][1]["fnames"]]
    for trial, stored in loaded[1:]:
        if [str(f) for f in stored["fnames"]] != fnames:
            raise EnsembleError(f"trial {trial.number}: {VAL_PREDICTIONS} lists other validation clips than trial "
                                f"{loaded[0][0].number} under the same split id {split}")
    targets = val_targets(fnames, split)
    candidates = [_candidate(trial, stored["probs"], targets, spec) for trial, stored in loaded]
    candidates.sort(key=lambda c: (-c.lwlrap, c.number))
    return Pool(candidates, fnames, split, targets, notes)


def targets_from_data(data_dir: Path) -> Callable[[list[str], str], np.ndarray]:
    """Validation labels from the data folder's train_curated.csv, checked against the split's identity."""
    def targets(fnames: list[str], split: str) -> np.ndarray:
        curated = read_labelled_csv(data_dir / "train_curated.csv", data_dir / "train_curated")
        rows = {path.name: k for k, path in enumerate(curated.paths)}
        missing = [f for f in fnames if f not in rows]
        if missing:
            raise DataError(f"{data_dir / 'train_curated.csv'}: lacks validation clip(s) {', '.join(missing[:3])} of the "
                            f"study's trials; pass the study's data folder with --data")
        chosen = curated.targets[[rows[f] for f in fnames]]
        if split_identity(fnames, chosen) != split:
            raise DataError(f"{data_dir / 'train_curated.csv'}: the labels of the validation clips differ from those "
                            f"the trials were validated on (split {split}); pass the study's data folder with --data")
        return chosen.astype(np.float64)
    return targets


def _candidate(trial: FrozenTrial, probs: np.ndarray, targets: np.ndarray, spec: StudySpec | None) -> Candidate:
    config = trial_config(trial, spec)
    attrs = trial.user_attrs
    feature_cost, model_cost = _number(attrs.get("feature_cost")), _number(attrs.get("model_cost"))
    if model_cost is None or feature_cost is None:  # a trial that recorded only its total cost shares nothing
        feature_cost, model_cost = None, _number(attrs.get("inference_cost"))
    folds = finished_folds(attrs)
    if folds is not None and model_cost is not None:  # a cross-validated trial ships as its K fold models
        model_cost *= folds
    probs = probs.astype(np.float64)
    return Candidate(trial.number, float(trial.value), lwlrap(targets, probs), probs, config,
                     feature_cache_key(config.features), feature_cost, model_cost, attrs.get("threads"))


# -- selection ----------------------------------------------------------------------------------------
def select_from_study(study: optuna.Study, files: TrialFiles, data_dir: Path, *, spec: StudySpec | None,
                      rounds: int, max_kernel_s: float | None = None, pooling: str = "mean", bags: int = 1,
                      require_weights: bool = False) -> Selection:
    """Load the study's candidates (labels from ``data_dir``) and select; compared with ``best_trial``."""
    budget = budget_for(spec.kernel if spec is not None else None, max_kernel_s)
    pool = load_candidates(study, files, targets_from_data(data_dir), spec=spec, require_weights=require_weights)
    best = best_trial(study)
    return select(pool, rounds=rounds, budget=budget, pooling=pooling, bags=bags,
                  single=best.number if best is not None else None)


def select(pool: Pool, *, rounds: int, budget: Budget, pooling: str = "mean", bags: int = 1, seed: int = 0,
           single: int | None = None) -> Selection:
    """Greedy forward selection with replacement (see the module docstring); ``single`` is the trial the
    ensemble is compared with (the study's best; default the pool's best)."""
    if rounds < 1:
        raise ConfigError(f"--ensemble {rounds}: expected at least 1 selection round")
    if bags < 1:
        raise ConfigError(f"--bags {bags}: expected at least 1")
    if pooling not in POOLINGS:
        raise ConfigError(f"--pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    notes = list(pool.notes)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()  # members of earlier bags: they run in the kernel whatever this bag picks
    weights: Counter = Counter()
    steps: list[Step] = []
    best_rounds = []
    for bag in range(bags):
        subset = pool.candidates
        if bags > 1:
            size = max(1, math.ceil(BAG_FRACTION * len(subset)))
            keep = set(rng.choice(len(subset), size=size, replace=False).tolist())
            subset = [c for k, c in enumerate(subset) if k in keep]
        counts, bag_steps, best_round = _greedy(pool, subset, rounds, budget, pooling, chosen, bag, notes)
        steps += bag_steps
        best_rounds.append(best_round)
        chosen |= set(counts)
        for number, count in counts.items():  # each bag's ensemble weighs the same
            weights[number] += count / sum(counts.values())
    if not weights:
        raise EnsembleError(f"no trial fits the kernel time budget of {budget.limit_s:,.0f} s on its own "
                            f"(the smallest would take {min_projection(pool, budget)})")
    order = {n: k for k, n in enumerate(dict.fromkeys(s.trial for s in steps))}
    total = sum(weights.values())  # a bag that found nothing within the budget adds nothing
    ranked = {n: w / total for n, w in sorted(weights.items(), key=lambda item: (-item[1], order[item[0]]))}
    candidates = pool.by_number()
    members = [candidates[n] for n in ranked]
    score = lwlrap(pool.targets, pool_probabilities([m.probs for m in members], pooling, list(ranked.values())))
    if single not in candidates:
        if single is not None:
            notes.append(f"the study's best trial {single} has no stored validation predictions here; the ensemble "
                         f"is compared with the best candidate, trial {pool.candidates[0].number}")
        single = pool.candidates[0].number
    return Selection(pool, ranked, score, single, candidates[single].lwlrap, steps, best_rounds,
                     budget.projected_s(members), budget, pooling, rounds, bags, notes)


def _greedy(pool: Pool, subset: list[Candidate], rounds: int, budget: Budget, pooling: str, chosen: set[int],
            bag: int, notes: list[str]) -> tuple[Counter, list[Step], int]:
    """One bag: ``rounds`` greedy additions; returns the counts of the best prefix, the path, its length."""
    counts: Counter = Counter()
    total = np.zeros_like(pool.targets)
    steps: list[Step] = []
    best = (-math.inf, Counter(), 0)
    terms = {c.number: (np.log(np.clip(c.probs, _GEOMETRIC_FLOOR, 1.0)) if pooling == "geometric" else c.probs)
             for c in subset}
    by_number = pool.by_number()
    told: set[int] = set()
    for round_ in range(1, rounds + 1):
        pick: tuple[float, Candidate] | None = None
        refused: tuple[float, Candidate, float | None] | None = None
        for candidate in subset:  # best alone first: a tie keeps the better single model
            mean = (total + terms[candidate.number]) / round_
            score = lwlrap(pool.targets, np.exp(mean) if pooling == "geometric" else mean)
            if candidate.number not in counts and candidate.number not in chosen:
                members = [by_number[n] for n in chosen | set(counts)] + [candidate]
                if not budget.fits(members):
                    if refused is None or score > refused[0]:
                        refused = (score, candidate, budget.projected_s(members))
                    continue
            if pick is None or score > pick[0]:
                pick = (score, candidate)
        if refused is not None and (pick is None or refused[0] > pick[0]) and refused[1].number not in told:
            told.add(refused[1].number)  # once per bag: later rounds would repeat it
            projected = "unknown (no inference cost recorded)" if refused[2] is None else f"{refused[2]:,.0f} s"
            notes.append(f"{'bag ' + str(bag + 1) + ', ' if bag else ''}round {round_}: trial {refused[1].number} "
                         f"refused (lwlrap would be {refused[0]:.4f}) because the projected kernel time would be "
                         f"{projected} > the budget of {budget.limit_s:,.0f} s")
        if pick is None:
            break
        score, candidate = pick
        counts[candidate.number] += 1
        total += terms[candidate.number]
        members = [by_number[n] for n in chosen | set(counts)]
        steps.append(Step(bag, round_, candidate.number, score, len(counts), budget.projected_s(members)))
        if score > best[0]:
            best = (score, Counter(counts), round_)
    return best[1], steps, best[2]


def min_projection(pool: Pool, budget: Budget) -> str:
    """The smallest projected kernel time of a single candidate, for messages."""
    projections = [p for p in (budget.projected_s([c]) for c in pool.candidates) if p is not None]
    return f"{min(projections):,.0f} s" if projections else "an unknown time (no inference cost recorded)"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:12])) + (f" and {len(numbers) - 12} more" if len(numbers) > 12 else "")
