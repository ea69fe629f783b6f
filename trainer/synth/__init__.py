"""Built-in data sets in exactly the FAT2019 layout, so the pipeline runs and is judged without Kaggle data.

``demo``: 20 labels realised by parametric tone and noise recipes (``recipes.py``). ``sampled``: 24 labels
played from recorded samples of two SoundFonts and spoken by espeak-ng voices (``sampled.py``; Debian packages
fluid-soundfont-gm, timgm6mb-soundfont, espeak-ng). Every set is planned and written by ``layout.py``: same seed
and scale, same bytes. ``python -m trainer.synth --out DIR [--kind demo|sampled]``.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainer.synth import layout
from trainer.synth.layout import COMPLETE_MARKER, BuiltinSet, MissingSoundSourceError
from trainer.synth.recipes import DEMO, REALISED_LABELS
from trainer.synth.sampled import SAMPLED, SAMPLED_LABELS

_BUILTINS: dict[str, BuiltinSet] = {DEMO.name: DEMO, SAMPLED.name: SAMPLED}
BUILTIN_DATASETS: tuple[str, ...] = tuple(_BUILTINS)

__all__ = ["BUILTIN_DATASETS", "COMPLETE_MARKER", "REALISED_LABELS", "SAMPLED_LABELS", "MissingSoundSourceError",
           "ensure_builtin", "ensure_demo_data", "generate"]


def _builtin(name: str) -> BuiltinSet:
    if name not in _BUILTINS:
        raise ValueError(f"built-in data set {name!r}: expected one of {', '.join(BUILTIN_DATASETS)}")
    return _BUILTINS[name]


def generate(out: str | os.PathLike, *, kind: str = "demo", scale: float = 1.0, seed: int = 0,
             progress: bool = False) -> Path:
    """Write the built-in set ``kind`` into ``out`` (absent or empty); it appears complete or not at all."""
    return layout.generate(Path(out), _builtin(kind), scale=scale, seed=seed, progress=progress)


def ensure_builtin(name: str, *, scale: float = 1.0, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached built-in set ``<cache>/<name>/scale-<s>-seed-<n>``, generated on first use, shared race-free."""
    return layout.ensure(_builtin(name), scale=scale, seed=seed, cache_dir=cache_dir)


def ensure_demo_data(*, scale: float = 1.0, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached demo set for (scale, seed); ``ensure_builtin("demo", ...)``."""
    return ensure_builtin("demo", scale=scale, seed=seed, cache_dir=cache_dir)
