"""Search-test fixtures: tiny study specs, a warm feature cache, backends, worker subprocesses."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest

from search.study.storage import default_storage_url, open_storage

TINY_BASE = """\
"model.depth" = 18
"model.width" = 0.0625
"features.n_mels" = 32
"features.crop_frames" = 64
"optim.batch_size" = 16
"optim.lr" = 3e-3
"""
TINY_SPACE = """\
"optim.lr" = { float = [1e-4, 1e-2], log = true }
"model.head" = { choices = ["linear", "mlp"] }
"model.head_hidden" = { int = [8, 32], when = { "model.head" = "mlp" } }
"""
PG_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")


def write_spec(studies_dir: Path, name: str, *, epochs: int = 2, pruner: str = 'name = "none"',
               space: str = TINY_SPACE, extra: str = "", startup: str = "near_baseline = 0",
               study: str = "") -> Path:
    """A tiny study spec over the 0.05-scale demo set (trials take about a second on one core)."""
    studies_dir.mkdir(parents=True, exist_ok=True)
    path = studies_dir / f"{name}.toml"
    path.write_text(f'[study]\ndata = "demo"\ndata_scale = 0.05\nepochs = {epochs}\n{study}\n[base]\n{TINY_BASE}\n'
                    f'[sampler]\nseed = 0\nn_startup_trials = 2\n\n[startup]\n{startup}\n\n[pruner]\n{pruner}\n\n'
                    f'{extra}\n[space]\n{space}', encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def warm_cache(demo_data: Path) -> Path:
    """Fill the session's feature cache for the tiny base config once, so workers only read it."""
    from tests.conftest import TINY_OVERRIDES
    from trainer import TrainConfig, train_and_evaluate

    config = TrainConfig().with_overrides({**TINY_OVERRIDES, "optim.epochs": 1})
    train_and_evaluate(config, demo_data, threads=1, progress=False, verbose=False)
    return demo_data


def _postgres_url() -> str | None:
    import sqlalchemy

    from search.study.storage import _with_available_driver

    for url in PG_URLS:
        try:
            engine = sqlalchemy.create_engine(_with_available_driver(url))
            with engine.connect():
                pass
            engine.dispose()
            return url
        except Exception:  # any failure to connect means "no server here": try the next user, then skip
            continue
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path) -> Callable[[str], str]:
    """Backend supplier (Optuna's StorageSupplier pattern): study name -> storage URL."""
    if request.param == "sqlite":
        return lambda name: default_storage_url(name, tmp_path / "studies")
    url = _postgres_url()
    if url is None:
        pytest.skip(f"no PostgreSQL server reachable at {' or '.join(PG_URLS)} (trust auth)")
    return lambda name: url


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a database nobody has used yet: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = _postgres_url()
    if url is None:
        pytest.skip(f"no PostgreSQL server reachable at {' or '.join(PG_URLS)} (trust auth)")
    import sqlalchemy

    from search.study.storage import _with_available_driver

    name = unique_name("fresh").replace("-", "_")
    admin = sqlalchemy.create_engine(_with_available_driver(url.rsplit("/", 1)[0] + "/postgres"),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker(studies_dir: Path, study: str, *args: str) -> subprocess.Popen:
    """Start ``python -m search.run`` as a worker process with a 1 s heartbeat and 2 s grace."""
    command = [sys.executable, "-m", "search.run", "--study", study, "--studies-dir", str(studies_dir),
               "--threads", "1", "--heartbeat", "1", "--grace", "2", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def fake_training(curves: dict | None = None, *, error: BaseException | None = None, at_epoch: int = 1,
                  inference_cost: float = 0.001):
    """A stand-in for train_and_evaluate: per-epoch lwlrap chosen by the trial's lr (default 0.5 each
    epoch); writes the files the real trainer writes, and raises ``error`` at ``at_epoch`` if given."""
    import numpy as np

    from trainer import Result

    def fake(config, data_dir=None, *, on_epoch=None, workdir=None, **kwargs):
        workdir = Path(workdir)
        history = (curves or {}).get(config.optim.lr, [0.5] * config.optim.epochs)
        best, best_epoch, metrics_seen = float("-inf"), 0, []
        for epoch, value in enumerate(history, start=1):
            if error is not None and epoch == at_epoch:
                raise error
            (workdir / "last.pth").write_bytes(f"state after epoch {epoch}".encode())
            (workdir / "config.json").write_text(config.to_json())
            if value > best:
                best, best_epoch = value, epoch
                (workdir / "best.pth").write_bytes(b"weights")
                np.savez(workdir / "val_predictions.npz", probs=np.zeros((2, 80), np.float16),
                         fnames=np.array(["a.wav", "b.wav"]), split=np.array("s"), epoch=np.array(epoch),
                         lwlrap=np.array(value))
            metrics = {"epoch": epoch, "lwlrap": value, "best_lwlrap": best, "train_loss": 0.1, "epoch_time": 0.01,
                       "inference_cost": inference_cost, "model_cost": inference_cost / 2}
            metrics_seen.append(metrics)
            on_epoch(epoch, dict(metrics))
        return Result(best_lwlrap=best, last_lwlrap=history[-1], best_epoch=best_epoch, epochs_run=len(history),
                      history=metrics_seen, wall_time=0.1, epoch_time=0.01, best_path=workdir / "best.pth",
                      last_path=workdir / "last.pth", feature_cache_key="k", inference_cost=inference_cost,
                      feature_cost=inference_cost / 2, model_cost=inference_cost / 2, resumed_from_epoch=0,
                      threads=1, val_predictions_path=workdir / "val_predictions.npz")
    return fake
