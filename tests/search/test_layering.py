"""The layering docs/development.md promises: search/ uses the trainer's public surface only; the trainer never
imports optuna or search/."""
from __future__ import annotations

import ast
import sys
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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def search_modules() -> dict[str, Path]:
    """Every module under search/, subpackages included, by dotted name."""
    return {module_name(path): path for path in sorted((ROOT / "search").rglob("*.py"))}


def test_search_imports_only_the_trainers_public_surface():
    for path in search_modules().values():
        for name in imported_modules(path):
            if name.startswith("trainer."):
                assert name.split(".", 1)[1] in trainer.__all__, f"{path.name} imports {name}: not in trainer.__all__"


def test_the_trainer_never_imports_optuna_or_search():
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        bad = {n for n in imported_modules(path) if n.split(".")[0] in ("optuna", "search")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def search_import_graph() -> dict[str, set[str]]:
    """search module -> the search modules it imports, imports inside functions included."""
    modules = search_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            # `from search.x import y` names search.x.y: the module y when it is one, else the module search.x
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != "search":
                targets.add(imported)
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


def test_the_module_walk_sees_subpackages(tmp_path, monkeypatch):
    package = tmp_path / "search" / "kaggle"
    package.mkdir(parents=True)
    (tmp_path / "search" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "kernel.py").write_text("from search.kaggle import export\n")
    (package / "export.py").write_text("import search.kaggle.kernel\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert set(search_modules()) == {"search", "search.kaggle", "search.kaggle.kernel", "search.kaggle.export"}
    assert find_cycle(search_import_graph()) is not None


def command_modules() -> set[str]:
    """The command-line modules: those with a top-level ``if __name__ == "__main__":``."""
    names = set()
    for name, path in search_modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                names.add(name)
    return names


def test_no_module_imports_a_command_line_module():
    """CLIs parse arguments and print; what they do lives in modules others can import (tests may import CLIs)."""
    commands = command_modules()
    assert {"search.run", "search.best", "search.report", "search.dashboard", "search.quickstart"} <= commands
    for path in sorted([*(ROOT / "search").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
                        *(ROOT / "trainer").rglob("*.py")]):
        for imported in imported_modules(path):
            assert imported not in commands or imported == module_name(path), \
                f"{path.relative_to(ROOT)} imports the command-line module {imported}"


# The house, bottom to top: a package may import its own layer and those below it, never one above.
LAYERS = ["search.spec", "search.study", "search.kaggle", "search.views", "search.worker"]


def layer_of(module: str) -> int:
    """0..4 for the packages in LAYERS, 5 for a command (``search/*.py``), -1 for ``search`` itself."""
    for rank, package in enumerate(LAYERS):
        if module == package or module.startswith(package + "."):
            return rank
    return len(LAYERS) if module != "search" else -1


def test_every_search_module_lives_in_a_layer_or_is_a_command():
    for name in search_modules():
        if layer_of(name) == len(LAYERS):
            assert name.count(".") == 1, f"{name}: a module under search/ outside {LAYERS}"


def test_dependencies_run_one_way_spec_study_kaggle_views_worker_commands():
    for name, targets in search_import_graph().items():
        for target in targets:
            assert layer_of(target) <= layer_of(name), \
                f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)}): the layers run " \
                f"{' < '.join(LAYERS)} < commands"


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    for package in ("study", "worker"):
        (tmp_path / "search" / package).mkdir(parents=True)
        (tmp_path / "search" / package / "__init__.py").write_text("")
    (tmp_path / "search" / "__init__.py").write_text("")
    (tmp_path / "search" / "study" / "record.py").write_text("from search.worker.console import Console\n")
    (tmp_path / "search" / "worker" / "console.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    upward = [(n, t) for n, ts in search_import_graph().items() for t in ts if layer_of(t) > layer_of(n)]
    assert upward == [("search.study.record", "search.worker.console")]
