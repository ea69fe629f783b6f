"""What an ensemble selection reports: the greedy curve, the chosen members, and an honest comparison with
the single best trial (validation gain, which is optimistic because the ensemble was chosen on that split,
and the held-out test gain where the data has test labels: the demo and benchmark sets do).

``report_section`` is the study report's "Ensemble selection" section; ``search.best --ensemble`` prints
``describe``. Held-out scores come from in-project inference (cached log-mels -> FeatureBank ->
predict_bank, the validation path), which the generated kernel equals to 1e-5.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from search.kaggle.ensemble import BAG_FRACTION, EnsembleError, Selection, select_from_study
from search.kaggle.kernel_main import pool_probabilities
from search.spec import StudySpec
from search.study.artifacts import TrialFiles
from search.study.record import resolve_data
from trainer import (
    VAL_PREDICTIONS,
    CheckpointError,
    ConfigError,
    DataError,
    FeatureBank,
    TrainConfig,
    atomic_path,
    build_model,
    load_features,
    load_state_dict,
    lwlrap,
    predict_bank,
    read_labelled_csv,
    resolve_device,
)

DEFAULT_ROUNDS = 10  # greedy rounds the report runs (the CLI's --ensemble K)
TEST_LABELS = "test_labels.csv"


@dataclass(frozen=True)
class HeldOut:
    """Test lwlrap of the ensemble and of the single best trial on clips the search never saw."""

    ensemble: float
    single: float
    clips: int


def predict_models(configs: list[TrainConfig], weights: Sequence[Path | Mapping[str, torch.Tensor]], paths: list[Path], *,
                   cache_dir: str | os.PathLike | None = None, device: str = "auto") -> tuple[list[np.ndarray], list[int]]:
    """Each model's probabilities on ``paths`` (cached log-mels, as validation computes them), and the indices
    of the clips every model could read (unreadable clips are left out). ``weights``: each model's state_dict
    or the file that holds it."""
    dev = resolve_device(device)
    arrays_per_model = [load_features(paths, c.features, cache_dir=cache_dir, progress=False).arrays for c in configs]
    readable = [i for i in range(len(paths)) if all(arrays[i] is not None for arrays in arrays_per_model)]
    if not readable:
        raise DataError(f"none of the {len(paths)} clips could be read (first: {paths[0] if paths else '-'})")
    out = []
    for config, state, arrays in zip(configs, weights, arrays_per_model):
        bank = FeatureBank.from_arrays([arrays[i] for i in readable], normalize=config.features.normalize, device=dev)
        model = build_model(config.model)
        model.load_state_dict(state if isinstance(state, Mapping) else load_state_dict(state))
        out.append(predict_bank(model.to(dev), bank, n_frames=config.features.crop_frames,
                                pad_mode=config.features.pad_mode))
    return out, readable


def held_out_test(selection: Selection, files: TrialFiles, data_dir: Path, *,
                  cache_dir: str | os.PathLike | None = None, device: str = "auto") -> HeldOut | str:
    """Score the ensemble and the single best trial on the data's test labels with the trials' own weights;
    a one-line reason instead when that is not possible."""
    labels = data_dir / TEST_LABELS
    if not labels.is_file():
        return f"no {TEST_LABELS} in {data_dir} (Kaggle's test set is unlabelled)"
    numbers = list(dict.fromkeys([selection.single, *selection.weights]))
    missing = [n for n in numbers if not files.has(n, "best.pth")]
    if missing:
        return (f"trial(s) {', '.join(map(str, missing))} no longer have their best.pth (checkpoint retention); "
                f"benchmarks/bench_ensemble.py retrains and scores the exported kernels instead")
    candidates = selection.pool.by_number()
    truth = read_labelled_csv(labels, data_dir / "test")
    with tempfile.TemporaryDirectory(prefix="fat2019-heldout-") as tmp:
        weight_files = []
        for number in numbers:
            folder = Path(tmp) / str(number)
            folder.mkdir()
            weight_files.append(files.pull(number, "best.pth", folder))
        probs, readable = predict_models([candidates[n].config for n in numbers], weight_files, list(truth.paths),
                                         cache_dir=cache_dir, device=device)
    by_number = dict(zip(numbers, probs))
    targets = truth.targets[readable]
    ensemble = pool_probabilities([by_number[n] for n in selection.weights], selection.pooling,
                                  list(selection.weights.values()))
    return HeldOut(lwlrap(targets, ensemble), lwlrap(targets, by_number[selection.single]), len(readable))


def held_out_or_reason(selection: Selection, files: TrialFiles, data_dir: Path, *,
                       cache_dir: str | os.PathLike | None = None) -> HeldOut | str:
    """``held_out_test``, with a broken test set or checkpoint as the reason instead of an error: the
    held-out score is an addition to the selection, not a condition for it."""
    try:
        return held_out_test(selection, files, data_dir, cache_dir=cache_dir)
    except (DataError, CheckpointError, ConfigError) as exc:
        return f"could not score the test clips: {exc}"


def describe(selection: Selection, held_out: HeldOut | str | None = None) -> list[str]:
    """Markdown lines: the greedy path, the chosen members, validation and held-out gains, kernel time, notes."""
    pool, budget = selection.pool, selection.budget
    limit = "no kernel time limit" if budget.limit_s is None else f"kernel time budget {budget.limit_s:,.0f} s"
    bags = f" in {selection.bags} bags of {max(1, math.ceil(BAG_FRACTION * len(pool.candidates)))} trials" if selection.bags > 1 else ""
    lines = [f"Greedy ensemble selection (Caruana et al. 2004): {selection.rounds} round(s) with replacement{bags} "
             f"over {len(pool.candidates)} COMPLETE feasible trial(s) with stored validation predictions "
             f"({len(pool.fnames)} clips, split {pool.split}); {selection.pooling} pooling; {limit}.", ""]
    projected = budget.test_audio_s is not None  # without the spec's [kernel] there is no test audio to project on
    lines += ["| bag | round | added trial | validation lwlrap | members |"
              + (" projected kernel s |" if projected else ""),
              "|---|---|---|---|---|" + ("---|" if projected else "")]
    for step in selection.steps:
        kept = " (kept)" if step.round == selection.best_round[step.bag] else ""
        lines.append(f"| {step.bag + 1} | {step.round}{kept} | {step.trial} | {step.lwlrap:.4f} | {step.members} |"
                     + (f" {_seconds(step.projected_s)} |" if projected else ""))
    lines += ["", "| trial | weight | own validation lwlrap | reported lwlrap | log-mel (n_mels/n_fft/hop) | "
                  "model s per 1000 s audio |", "|---|---|---|---|---|---|"]
    for member in selection.members:
        f = member.config.features
        cost = "?" if member.model_cost is None else f"{member.model_cost * 1000:.2f}"
        lines.append(f"| {member.number} | {selection.weights[member.number]:.3f} | {member.lwlrap:.4f} | "
                     f"{member.value:.4f} | {f.n_mels}/{f.n_fft}/{f.hop} | {cost} |")
    gain = selection.lwlrap - selection.single_lwlrap
    lines += ["", f"Validation lwlrap: ensemble {selection.lwlrap:.4f}, single best trial {selection.single} "
                  f"{selection.single_lwlrap:.4f} ({gain:+.4f}). The ensemble was chosen on this validation split and "
                  f"is scored on it, so this gain is optimistic."]
    if isinstance(held_out, HeldOut):
        lines.append(f"Held-out test lwlrap ({TEST_LABELS}, {held_out.clips} clips): ensemble {held_out.ensemble:.4f}, "
                     f"single best {held_out.single:.4f} ({held_out.ensemble - held_out.single:+.4f}).")
    elif held_out:
        lines.append(f"Held-out test gain not measured: {held_out}.")
    if projected:
        lines.append(f"Projected kernel time: {_seconds(selection.projected_s)} s"
                     + ("" if budget.limit_s is None else f" (budget {budget.limit_s:,.0f} s)") + ".")
    else:
        lines.append("Kernel time not projected: the study's spec has no [kernel] section (test_audio_s, budget_s).")
    if selection.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in selection.notes]
    return lines + [""]


def write_curve(selection: Selection, path: Path) -> Path:
    """PNG of validation lwlrap against selection rounds (one line per bag), the single best as a reference."""
    import matplotlib

    matplotlib.use("Agg")  # headless GPU boxes
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for bag in range(selection.bags):
        steps = [s for s in selection.steps if s.bag == bag]
        axes.plot([s.round for s in steps], [s.lwlrap for s in steps], marker="o",
                  label=f"bag {bag + 1}" if selection.bags > 1 else "greedy ensemble")
        kept = [s for s in steps if s.round == selection.best_round[bag]]
        axes.plot([s.round for s in kept], [s.lwlrap for s in kept], "k*", markersize=14)
    axes.axhline(selection.single_lwlrap, color="grey", linestyle="--", label=f"single best (trial {selection.single})")
    axes.set_xlabel("selection round (members picked, with replacement)")
    axes.set_ylabel("validation lwlrap (optimistic: chosen on it)")
    axes.set_title(f"Greedy ensemble selection: {len(selection.weights)} member(s) kept (star)")
    axes.legend()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def report_section(study: optuna.Study, files: TrialFiles, spec: StudySpec | None, out_dir: Path, *,
                   data_dir: Path | None = None, rounds: int = DEFAULT_ROUNDS,
                   cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The study report's "Ensemble selection" section (markdown lines) and its curve
    ``out_dir/ensemble_curve.png``; the validation labels come from ``data_dir``, else the study's data
    location (``resolve_data``). A one-line note instead when the study cannot be ensembled (yet)."""
    lines = ["## Ensemble selection", ""]
    # checked before resolving the data: a built-in set would otherwise be generated just to say this
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return lines + ["Not available: no trial has completed yet.", ""]
    if not any(files.has(t.number, VAL_PREDICTIONS) for t in complete):
        return lines + [f"Not available: no completed trial has stored validation predictions ({VAL_PREDICTIONS}).",
                        ""]
    try:
        data_dir = data_dir if data_dir is not None else resolve_data(spec, None)
        selection = select_from_study(study, files, data_dir, spec=spec, rounds=rounds)
    except (EnsembleError, ConfigError, DataError) as exc:  # SpecError is a ConfigError
        return lines + [f"Not available: {exc}", ""]
    held_out = held_out_or_reason(selection, files, data_dir, cache_dir=cache_dir)
    write_curve(selection, Path(out_dir) / "ensemble_curve.png")
    return lines + describe(selection, held_out) + [
        "![Greedy ensemble selection](ensemble_curve.png)", "",
        f"Export it: `python -m search.best --study {study.study_name} --ensemble {rounds} --export`.", ""]


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"
