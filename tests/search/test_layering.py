"""The layering the README promises: search/ uses the trainer's public surface only; the trainer never
imports optuna or search/."""
from __future__ import annotations

import ast
from pathlib import Path

import trainer

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_search_imports_only_the_trainers_public_surface():
    for path in sorted((ROOT / "search").glob("*.py")):
        for name in imported_modules(path):
            if name.startswith("trainer."):
                assert name.split(".", 1)[1] in trainer.__all__, f"{path.name} imports {name}: not in trainer.__all__"


def test_the_trainer_never_imports_optuna_or_search():
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        bad = {n for n in imported_modules(path) if n.split(".")[0] in ("optuna", "search")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
