"""The study report on synthetic studies of any size: look at the plots, time the report.

    python -m benchmarks.bench_report --trials 50 --out test-artifacts/report-50
    python -m benchmarks.bench_report --trials 10 50 200 --out test-artifacts   # report-10/, report-50/, ...

A study here samples the spec's real space with its real sampler and pruner, but a made-up objective
replaces training (a score from a few parameters, a per-epoch learning curve, noise), so a 200-trial study
takes seconds. A few trials fail, as out-of-memory trials do. Not a test: it prints seconds per report.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search.spec import StudySpec, load_spec
from search.study.record import StudyHandle
from search.views.report import write_report

# A path, not the harness's STUDIES: tests/search/test_report.py runs this file as a script, not as a module.
DEMO_SPEC = Path(__file__).resolve().parent.parent / "studies" / "demo.toml"
FAIL_PROBABILITY = 0.04


class FakeOutOfMemory(RuntimeError):
    """Stands in for CUDA running out of memory: the trial ends FAILED with a reason."""


def fake_score(params: dict, rng: np.random.Generator) -> float:
    """A final lwlrap from a few parameters (lr peaks near 3e-3, wider nets and silu help, sigmoid hurts),
    plus noise; every other parameter does nothing, as many do in a real study."""
    lr = params.get("optim.lr", 2e-3)
    score = 0.62 - 0.09 * (math.log10(lr) - math.log10(3e-3)) ** 2
    score += {"relu": 0.0, "prelu": 0.01, "elu": 0.015, "silu": 0.03, "sigmoid": -0.12}[params.get("model.activation", "relu")]
    score += {0.0625: -0.05, 0.125: 0.0, 0.25: 0.03}[params.get("model.width", 0.125)]
    score += {1024: -0.02, 1764: 0.0, 2048: 0.015}[params.get("features.n_fft", 1764)]
    score -= 0.2 * (params.get("model.dropout", 0.0) - 0.2) ** 2
    score -= 0.01 * params.get("augment.time_masks", 0)
    return float(score + rng.normal(0.0, 0.012))


def make_study(spec: StudySpec, trials: int, seed: int = 0) -> StudyHandle:
    """An in-memory study of ``trials`` trials over ``spec``'s space: baseline first, ASHA-pruned per epoch."""
    rng = np.random.default_rng(seed)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=f"{spec.name}-synthetic-{trials}", direction="maximize",
                                sampler=spec.make_sampler(seed), pruner=spec.make_pruner())
    study.enqueue_trial(spec.baseline_params(), user_attrs={"baseline": True})

    def objective(trial: optuna.Trial) -> float:
        params = spec.suggest(trial)
        final = fake_score(params, rng)
        value = float("nan")
        for epoch in range(1, spec.epochs + 1):
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr("wall_time", 12.0 * epoch)
            if trial.number > 0 and rng.random() < FAIL_PROBABILITY / spec.epochs:
                trial.set_user_attr("reason", "out of memory: fake")
                raise FakeOutOfMemory("fake")
            value = final * (1.0 - 0.6 * math.exp(-(epoch - 1) / 1.5)) + float(rng.normal(0.0, 0.004))
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the fake out-of-memory trials log a traceback each
    study.optimize(objective, n_trials=trials, catch=(FakeOutOfMemory,))
    return StudyHandle(study, storage, "in-memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[50])
    parser.add_argument("--spec", default=str(DEMO_SPEC))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="report folder (one trial count) or parent of report-N/")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    print("| trials | complete | pruned | failed | report s |\n|---|---|---|---|---|")
    for trials in args.trials:
        handle = make_study(spec, trials, args.seed)
        study = handle.study
        out = Path(args.out) if len(args.trials) == 1 else Path(args.out) / f"report-{trials}"
        start = time.perf_counter()
        write_report(handle, out)
        seconds = time.perf_counter() - start
        counts = [len(study.get_trials(deepcopy=False, states=(state,)))
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        print(f"| {trials} | {counts[0]} | {counts[1]} | {counts[2]} | {seconds:.1f} |  {out}")


if __name__ == "__main__":
    main()
