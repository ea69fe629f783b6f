"""Shared fixtures: one tiny demo data set and one feature cache for the whole test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.config import TrainConfig

# Tiny but real: the smallest ResNet the factory builds, short crops, a 2-epoch budget.
TINY_OVERRIDES = {
    "model.depth": 18,
    "model.width": 0.0625,
    "features.n_mels": 32,
    "features.crop_frames": 64,
    "optim.epochs": 2,
    "optim.batch_size": 16,
    "optim.lr": 3e-3,
}


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A feature cache shared by every test of the session (also exported to subprocesses via the env)."""
    cache = tmp_path_factory.mktemp("fat2019-cache")
    os.environ["FAT2019_SEARCH_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def demo_data(session_cache) -> Path:
    from trainer.synth import ensure_demo_data

    return ensure_demo_data(scale=0.05, seed=0, cache_dir=session_cache)


@pytest.fixture()
def tiny_config() -> TrainConfig:
    return TrainConfig().with_overrides(TINY_OVERRIDES)


def pytest_configure(config):
    # Tests use tiny tensors: one thread avoids oversubscribing CI's two cores (and is faster here).
    import torch

    torch.set_num_threads(1)


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` by relative path: two trees with equal maps hold the same bytes."""
    import hashlib

    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
