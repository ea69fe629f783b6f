"""search.views.plots on synthetic studies over the demo spec's space (a made-up objective, no training): what
each picture draws, read back from its matplotlib figure, and that the PNGs are real images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from optuna.trial import TrialState

from search.spec import load_spec
from search.views import plots
from search.views.figures import PRUNED_LABEL

DEMO_SPEC = Path(__file__).resolve().parents[2] / "studies" / "demo.toml"
EPOCHS = 4
NAMES = ["optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice"]


class FakeOutOfMemory(RuntimeError):
    pass


def synthetic_study(n_trials: int, seed: int = 0) -> optuna.Study:
    """The spec's baseline first, then random points of the demo space; lwlrap follows ``optim.lr`` alone
    (peak at 3e-3) and grows per epoch; the spec's ASHA pruner cuts trials; trials 9, 19, ... fail after
    reporting epoch 1 (their curve must not be drawn)."""
    spec = load_spec(DEMO_SPEC)
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed),
                                pruner=spec.make_pruner())
    study.enqueue_trial(spec.baseline_params())

    def objective(trial: optuna.Trial) -> float:
        params = spec.suggest(trial)
        final = 0.7 - 0.1 * math.log10(params["optim.lr"] / 3e-3) ** 2 + float(rng.normal(0.0, 0.005))
        for epoch in range(1, EPOCHS + 1):
            trial.report(final * epoch / EPOCHS, epoch)
            if trial.number % 10 == 9:
                raise FakeOutOfMemory()
            if trial.should_prune():
                raise optuna.TrialPruned()
        return final

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=n_trials, catch=(FakeOutOfMemory,))
    return study


def draw(study: optuna.Study, out: Path) -> tuple[dict[str, plots.Plot], dict]:
    """write_plots, keeping each figure it saves (by file stem) to read back what was drawn."""
    figures = {}
    save = plots.save_figure

    def keep(figure, path):
        figures[path.stem] = figure
        save(figure, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_figure", keep)
        written = plots.write_plots(study, out)
    return {plot.name: plot for plot in written}, figures


@pytest.fixture(scope="module")
def study_40() -> optuna.Study:
    return synthetic_study(40)


@pytest.fixture(scope="module")
def drawn_40(study_40, tmp_path_factory):
    return draw(study_40, tmp_path_factory.mktemp("plots-40"))


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))


def last_value(trial: optuna.trial.FrozenTrial) -> float:
    return trial.intermediate_values[max(trial.intermediate_values)]


def assert_real_png(path: Path) -> None:
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 300 and pixels.shape[1] >= 400, (path.name, pixels.shape)
    assert float(pixels[..., :3].std()) > 0.01, f"{path.name} is a uniform image"


def collection(ax, label: str):
    return next(c for c in ax.collections if c.get_label() == label)


def test_study_shape_used_below(study_40):
    """The synthetic study has what the plot tests need: several completed, pruned and failed trials."""
    counts = {state: len(by_state(study_40, state)) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    assert counts[TrialState.COMPLETE] >= 3 and counts[TrialState.PRUNED] >= 10 and counts[TrialState.FAIL] == 4


def test_plots_with_no_trial(tmp_path):
    written, _ = draw(optuna.create_study(direction="maximize"), tmp_path)
    assert list(written) == NAMES
    assert all(plot.path is None and plot.note.startswith("skipped: ") for plot in written.values())
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_plots_with_one_trial(tmp_path):
    written, _ = draw(synthetic_study(1), tmp_path)
    assert written["param_importances"].path is None
    assert "at least 2 completed trials" in written["param_importances"].note
    for name in ("optimization_history", "intermediate_values", "parallel_coordinate", "slice"):
        assert_real_png(written[name].path)


@pytest.mark.slow
def test_plots_with_many_trials(drawn_40):
    written, _ = drawn_40
    for name in NAMES:
        assert_real_png(written[name].path)
    assert not [p for p in written["slice"].path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_parallel_coordinates_draw_the_top_8_parameters_by_importance(study_40, drawn_40):
    written, figures = drawn_40
    labels = [label.get_text() for label in figures["parallel_coordinate"].axes[0].get_xticklabels()]
    axes = ["".join(label.split("\n")[:2]) for label in labels]
    importances, _ = plots.param_importances(study_40)
    assert axes == sorted(importances, key=lambda n: -importances[n])[:8] + ["lwlrap"]
    assert "the 8 highest-ranked of 25 parameters, ranked by parameter importance" in written["parallel_coordinate"].note


def test_without_importances_parameters_rank_by_how_the_objective_follows_them():
    """One completed trial (no importances) and many pruned ones whose lwlrap follows optim.lr: lr ranks
    first, conditional parameters set in a few trials do not win by chance, and the reason is given."""
    spec = load_spec(DEMO_SPEC)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(1))
    for number in range(15):
        trial = study.ask()
        params = spec.suggest(trial)
        trial.report(0.3 + 0.05 * math.log10(params["optim.lr"]), 1)
        study.tell(trial, 0.5 if number == 0 else None, state=TrialState.COMPLETE if number == 0 else TrialState.PRUNED)
    importances, _ = plots.param_importances(study)
    points = plots.plotted_trials(study.trials)

    ranked, how = plots.rank_params(points, plots.param_scales(study.trials), importances)

    assert importances == {} and len(points) == 15
    assert ranked[0] == "optim.lr" and len(ranked) == len({n for t in study.trials for n in t.params})
    assert "as importances are unavailable" in how


def test_slice_is_a_grid_with_one_panel_per_parameter(study_40, drawn_40):
    _, figures = drawn_40
    figure = figures["slice"]
    panels = {ax.get_title().split("  ")[0]: ax for ax in figure.axes if ax.get_visible()}
    params = {name for t in study_40.trials for name in t.params}
    assert set(panels) == params and len(params) == 25
    width, height = figure.get_size_inches()
    assert 0.5 <= width / height <= 2.0
    assert len({round(ax.get_position().x0, 3) for ax in panels.values()}) == plots.SLICE_COLUMNS
    activation = panels["model.activation"]
    assert [t.get_text() for t in activation.get_xticklabels()] == ["relu", "prelu", "elu", "silu"]
    lr = panels["optim.lr"]
    low, high = lr.get_xlim()
    assert lr.get_xscale() == "log" and low < 3e-4 and high > 1e-2  # the space's bounds, not the sampled range


def test_pruned_trials_are_drawn_marked_at_their_last_value_and_failed_ones_not(study_40, drawn_40):
    _, figures = drawn_40
    complete = by_state(study_40, TrialState.COMPLETE)
    pruned = by_state(study_40, TrialState.PRUNED)
    failed = {t.number for t in by_state(study_40, TrialState.FAIL)}

    history = figures["optimization_history"].axes[0]
    pruned_points = collection(history, PRUNED_LABEL)
    assert sorted(map(tuple, pruned_points.get_offsets())) == sorted((t.number, last_value(t)) for t in pruned)
    assert len(pruned_points.get_facecolors()) == 0  # hollow
    complete_numbers = {int(x) for x, _ in collection(history, "complete").get_offsets()}
    assert complete_numbers == {t.number for t in complete} and not complete_numbers & failed

    lr_panel = next(ax for ax in figures["slice"].axes if ax.get_title() == "optim.lr")
    assert sorted(y for _, y in collection(lr_panel, PRUNED_LABEL).get_offsets()) == sorted(map(last_value, pruned))

    parallel = figures["parallel_coordinate"].axes[0]
    pruned_lines = collection(parallel, PRUNED_LABEL)
    assert len(pruned_lines.get_segments()) == len(pruned)
    assert len(collection(parallel, "complete").get_segments()) == len(complete)


def test_intermediate_values_highlight_the_best_trials_in_distinct_colours(study_40, drawn_40):
    _, figures = drawn_40
    ax = figures["intermediate_values"].axes[0]
    curves = [t for t in study_40.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    best = study_40.best_trial
    highlighted = [line for line in ax.lines if line.get_label().startswith("#")]
    assert len(highlighted) == plots.HIGHLIGHTED_CURVES
    assert highlighted[0].get_label().startswith(f"#{best.number} ")
    colours = {line.get_color() for line in highlighted}
    assert len(colours) == plots.HIGHLIGHTED_CURVES and "0.8" not in colours
    grey = next(c for c in ax.collections if c.get_label().startswith("other trials"))
    assert len(grey.get_segments()) == len(curves) - plots.HIGHLIGHTED_CURVES  # the failed ones are not drawn
    cut = collection(ax, "where the pruner cut a trial")
    assert len(cut.get_offsets()) == len(by_state(study_40, TrialState.PRUNED))
