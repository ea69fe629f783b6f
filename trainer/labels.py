"""The 80-label FAT2019 vocabulary, in sample_submission column order."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

N_LABELS = 80


@lru_cache(maxsize=1)
def load_labels() -> tuple[str, ...]:
    """Return the vocabulary shipped with the package (a copy of the competition's label order)."""
    text = (Path(__file__).with_name("labels.txt")).read_text(encoding="utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != N_LABELS:
        raise RuntimeError(f"trainer/labels.txt: expected {N_LABELS} labels, found {len(labels)}")
    return labels
