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


def search_import_graph() -> dict[str, set[str]]:
    """search module -> the search modules it imports, imports inside functions included."""
    modules = {path.stem for path in (ROOT / "search").glob("*.py")}
    graph = {}
    for name in modules:
        targets = set()
        for imported in imported_modules(ROOT / "search" / f"{name}.py"):
            parts = imported.split(".")
            if parts[0] == "search" and len(parts) > 1 and parts[1] in modules:
                targets.add(parts[1])
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph[node]):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                found = visit(target, path + [target])
                if found:
                    return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [start])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_search_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(search_import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
