import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    sys.modules.setdefault(name, importlib.util.module_from_spec(spec))  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
