"""Generate the Kaggle kernel: ONE self-contained file that carries the project's own files unchanged.

The ``trainer`` package (modules and package data such as labels.txt) and the driver
(``search/kaggle/kernel_main.py``) are packed byte for byte into a zip archive, embedded in kernel.py as base64;
the kernel unpacks it into a private temporary folder and imports from there, ahead of anything installed
(argus-freesound's build script shipped its ``src/`` inside the kernel the same way). So the kernel runs
the very model builder, log-mel and inference code that trained and validated the models, nothing of the
project is installed on Kaggle, and the project's modules need follow no rule to fit in one file: they keep
their imports, their names and their ``__file__``. Generation refuses a carried module that imports, at
module level, anything but the standard library and what a Kaggle notebook has (imports inside functions
the kernel never calls, e.g. iterative-stratification or tensorboard in the trainer, are fine).
"""
from __future__ import annotations

import ast
import base64
import hashlib
import importlib.util
import io
import sys
import textwrap
import zipfile
from pathlib import Path

from trainer import atomic_write_text

DRIVER = "search.kaggle.kernel_main"
PACKAGES = ("trainer",)
# What a Kaggle GPU notebook offers besides the standard library (no internet, no pip install).
ALLOWED_THIRD_PARTY = frozenset({"torch", "numpy", "librosa", "soundfile", "tqdm"})
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same kernel, byte for byte


class KernelGenerationError(RuntimeError):
    """The project's files cannot be carried into the kernel; the message names the file and why."""


def bundle_files(driver: str = DRIVER, packages: tuple[str, ...] = PACKAGES) -> dict[str, bytes]:
    """Archive path -> content of every carried file: all files of ``packages`` (no caches) and the driver
    with its parent packages' ``__init__.py``."""
    files: dict[str, Path] = {}
    for package in packages:
        folder = _package_folder(package)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                files[f"{package}/{path.relative_to(folder).as_posix()}"] = path
    parts = driver.split(".")
    for depth in range(1, len(parts)):
        files.setdefault("/".join(parts[:depth]) + "/__init__.py", _package_folder(".".join(parts[:depth])) / "__init__.py")
    spec = importlib.util.find_spec(driver)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise KernelGenerationError(f"{driver}: no Python source found for the kernel's driver")
    files["/".join(parts) + ".py"] = Path(spec.origin)
    return {name: path.read_bytes() for name, path in sorted(files.items())}


def generate_kernel(driver: str = DRIVER, packages: tuple[str, ...] = PACKAGES) -> str:
    """The kernel's source text: header, the unpacking import, the archive, and a call of the driver's ``main``."""
    files = bundle_files(driver, packages)
    check_carried_modules(files, driver)
    archive = _zip(files)
    digest = hashlib.blake2b(b"".join(files.values()), digest_size=8).hexdigest()
    listing = textwrap.fill(", ".join(files) + f" (content digest {digest}).", 100)
    encoded = base64.b64encode(archive).decode("ascii")
    lines = "\n".join(encoded[i:i + 100] for i in range(0, len(encoded), 100))
    return _TEMPLATE.format(listing=listing, driver=driver, sha256=hashlib.sha256(archive).hexdigest(),
                            archive=lines, count=len(files))


def write_kernel(path: str | Path, driver: str = DRIVER) -> str:
    """Generate the kernel and write it atomically to ``path``; returns the text."""
    text = generate_kernel(driver)
    atomic_write_text(path, text)
    return text


def check_carried_modules(files: dict[str, bytes], driver: str) -> None:
    """Every carried module compiles and imports at module level only the stdlib, ALLOWED_THIRD_PARTY and
    carried packages; the driver defines ``main``."""
    carried = {name.split("/")[0] for name in files}
    for name, content in files.items():
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(content, filename=name)
        except SyntaxError as exc:
            raise KernelGenerationError(f"{name}:{exc.lineno}: does not compile: {exc.msg}") from None
        for node in _module_level(tree):
            for root in _imported_roots(node):
                if root not in carried and root not in ALLOWED_THIRD_PARTY and root not in sys.stdlib_module_names \
                        and root != "__future__":
                    raise KernelGenerationError(
                        f"{name}:{node.lineno}: imports {root!r} at module level, which a Kaggle notebook may lack; "
                        f"allowed: stdlib + {', '.join(sorted(ALLOWED_THIRD_PARTY))} (import it inside the function "
                        f"that needs it if the kernel never calls that function)")
    driver_file = driver.replace(".", "/") + ".py"
    if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in ast.parse(files[driver_file]).body):
        raise KernelGenerationError(f"{driver_file}: the kernel's driver must define main(argv=None, script=None)")


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KernelGenerationError(f"{package}: not an importable package, so it cannot be carried into the kernel")
    return Path(list(spec.submodule_search_locations)[0])


def _module_level(tree: ast.Module):
    """Import statements that run when the module is imported (not those inside function bodies)."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending.extend(ast.iter_child_nodes(node))


def _imported_roots(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    return [node.module.split(".")[0]] if node.module and not node.level else []


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content, compresslevel=9)
    return buffer.getvalue()


# The generated file. Kept to the standard library: it must run before anything of the project exists.
_TEMPLATE = '''\
#!/usr/bin/env python
"""FAT2019 inference kernel, generated by search/kaggle/kernel.py. It carries the project's own files unchanged in
the archive below, unpacks them into a private temporary folder and imports them from there ({count} files):
{listing}
Do not edit: regenerate with python -m search.best --export.

Run: python kernel.py [--test DIR] [--sample-submission CSV] [--out submission.csv] [--models DIR]
     [--device auto|cpu|cuda] [--batch-size N]   (defaults: Kaggle's competition paths)
or paste the whole file into a notebook cell. Needs torch, numpy, librosa, soundfile and tqdm.
"""
import atexit
import base64
import hashlib
import importlib
import io
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

_DRIVER = "{driver}"
_FOLDER_PREFIX = "fat2019-kernel-modules-"
_ARCHIVE_SHA256 = "{sha256}"
_ARCHIVE = """
{archive}
"""


def _carried(location) -> bool:
    """Whether a path lies in a folder this kernel (or an earlier run of it) unpacked."""
    path = Path(location or "/")
    return any(part.startswith(_FOLDER_PREFIX) for part in path.parts)


def _import_driver():
    try:
        archive = base64.b64decode(_ARCHIVE)
    except ValueError:  # a cut that leaves a partial base64 group
        archive = b""
    if hashlib.sha256(archive).hexdigest() != _ARCHIVE_SHA256:
        raise SystemExit("error: kernel.py's module archive is damaged (edited or cut short); regenerate it")
    folder = tempfile.mkdtemp(prefix=_FOLDER_PREFIX)
    atexit.register(shutil.rmtree, folder, True)
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        bundle.extractall(folder)
        roots = {{name.split("/")[0] for name in bundle.namelist()}}
    # This kernel owns the process: the copy of an earlier run (a re-run notebook cell) and same-named
    # installed modules step aside, so only the carried files are imported.
    for name in [n for n in sys.modules if n.split(".")[0] in roots]:
        if not _carried(getattr(sys.modules[name], "__file__", None)):
            print(f"kernel: replacing the already imported module {{name}} by the carried one", file=sys.stderr)
        del sys.modules[name]
    sys.path[:] = [folder] + [p for p in sys.path if not _carried(p)]
    importlib.invalidate_caches()
    return importlib.import_module(_DRIVER)


if __name__ == "__main__":
    _status = _import_driver().main(script=globals().get("__file__"))  # no __file__ in a notebook cell
    if _status:
        raise SystemExit(_status)
'''
