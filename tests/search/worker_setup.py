"""A worker on a fresh SQLite study in a test's folder, built as search.run builds one (build_worker)."""
from __future__ import annotations

import io
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.study.locate import locate
from search.worker.build import build_worker
from search.worker.objective import Trainer
from tests.search.conftest import write_spec
from trainer import train_and_evaluate

KERNEL = "[kernel]\nbudget_s = 3600\ntest_audio_s = 25500\nsafety = 0.5\n"


class Setup:
    """A worker on a fresh SQLite study in ``tmp_path`` (its console writes into ``self.out``)."""

    def __init__(self, tmp_path: Path, data: Path | None = None, train: Trainer = train_and_evaluate,
                 **spec_args) -> None:
        studies = tmp_path / "studies"
        write_spec(studies, "life", **spec_args)
        self.out = io.StringIO()
        self.worker = build_worker(locate("life", studies, spec_required=True), data or tmp_path, device="cpu",
                                   threads=1, sampler=optuna.samplers.RandomSampler(seed=0), heartbeat=60,
                                   grace=120, worker_id="test:1", stream=self.out, train=train)
        self.spec, self.handle, self.files = self.worker.spec, self.worker.handle, self.worker.files
        self.storage, self.runs = self.handle.storage, self.worker.runs_dir

    @property
    def study(self) -> optuna.Study:
        return self.handle.study

    def run(self, trials: int | None = None, **kwargs) -> int:
        return self.worker.run(trials=trials, **kwargs)


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]
