"""How every printed table and line shows a duration, a value and a trial's changes from the baseline."""
from __future__ import annotations

from typing import Any, Mapping


def format_duration(seconds: float) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``2h07m``: short enough for a narrow pane."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_value(value: Any, digits: int = 3) -> str:
    """A parameter value as every printed table shows it: floats to ``digits`` significant digits."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def param_changes(params: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """``lr=0.0012 head=mlp loss=lsoft``: params that differ from the baseline, by their last key part
    (``loss.name`` shows as ``loss``)."""
    changed = [f"{_short(key)}={format_value(value)}" for key, value in params.items() if baseline.get(key) != value]
    return " ".join(changed) if changed else "(baseline)"


def _short(key: str) -> str:
    section, _, leaf = key.rpartition(".")
    return section.rsplit(".", 1)[-1] if leaf == "name" and section else leaf
