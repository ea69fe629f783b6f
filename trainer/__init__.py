"""Audio tagging trainer for FAT2019: cached log-mel features, a configurable ResNet, lwlrap.

The public surface is small: describe a run with ``TrainConfig``, run it with ``train_and_evaluate``.
Names are imported on first use so ``import trainer.config`` stays light (no torch).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "trainer.config",
    "TrainConfig": "trainer.config",
    "DataError": "trainer.data",
    "NonFiniteLossError": "trainer.loop",
    "Result": "trainer.loop",
    "train_and_evaluate": "trainer.loop",
    "lwlrap": "trainer.metrics",
    "per_class_lwlrap": "trainer.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
