"""Where the project keeps derived files: the feature cache and the generated demo set."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FAT2019_SEARCH_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: an explicit argument, else $FAT2019_SEARCH_CACHE, else the user's cache dir."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fat2019-search"
