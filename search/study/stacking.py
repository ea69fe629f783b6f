"""Proposals that stack what helped: once a study's startup trials have finished, the baseline with every change
that beat it (and its neighbours) is queued, as a hand tuner keeps each change that helped and tries them together;
TPE goes on from there. The points come from the spec (``StudySpec.stacked_points``); queued once each."""
from __future__ import annotations

from typing import Sequence

import optuna
from optuna.trial import FrozenTrial

from search.spec import StudySpec

STACKED_ATTR = "stacked"  # a queued stack's user attr: which changes it stacks


def queue_stacked_points(study: optuna.Study, spec: StudySpec, trials: Sequence[FrozenTrial] | None = None
                         ) -> list[str]:
    """Queue the spec's stacked points that no trial of the study has tried yet; returns their notes. Called after
    every finished trial: the stack grows as more changes win. ``trials``: as the caller just read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    tried = [t.params for t in trials if t.params]  # a queued trial has no params until a worker takes it ...
    notes = {t.user_attrs.get(STACKED_ATTR) for t in trials}  # ... but its note names every change it makes
    queued = []
    for params, note in spec.stacked_points(trials):
        if params in tried or note in notes:
            continue
        study.enqueue_trial(params, user_attrs={STACKED_ATTR: note})
        tried.append(params)
        queued.append(note)
    return queued
