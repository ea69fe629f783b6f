#!/usr/bin/env bash
# Build .whl/, the wheels an offline CUDA box (x86-64, Python 3.12, CUDA PyTorch, no package registry) needs to
# run benchmarks/gpu_check.py, and print the one command line that installs them there and runs it.
#
#     bash benchmarks/device_wheels.sh [PYTHON] [WHEEL_DIR]     # defaults: .venv/bin/python, .whl
#
# Which wheels: every package `pip freeze` lists in this project's venv, at that exact version, except those
# that box's image already holds (DEVICE_HAS below, as listed on 2026-11-17; torch and numpy among them: its
# CUDA builds stay) and the project itself.
# Downloaded with --no-deps (every needed one is named) for cp312 manylinux x86-64; .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DIR=${2:-.whl}
DEVICE_PY=3.12
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
# Not needed there: the linter, and the PostgreSQL driver (the check uses SQLite).
SKIP="pyflakes psycopg2-binary fat2019-search"

pins=$("$PY" -m pip freeze --exclude-editable | "$PY" -c '
import re, sys
have = set(sys.argv[1].split()) | set(sys.argv[2].split())
for line in sys.stdin:
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
    if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() not in have:
        print(f"{m.group(1)}=={m.group(2)}")
' "$DEVICE_HAS" "$SKIP")
[ -n "$pins" ] || { echo "device_wheels: no package to carry (pip freeze of $PY gave none missing there)" >&2; exit 1; }

rm -rf "$DIR" && mkdir -p "$DIR"
for pin in $pins; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DIR" "$pin" \
    || { echo "device_wheels: no cp${DEVICE_PY/./} x86-64 wheel for $pin" >&2; exit 1; }
done
count=$(ls "$DIR"/*.whl | wc -l)
echo "device_wheels: $count wheels, $(du -sh "$DIR" | cut -f1), in $DIR/ for: $(echo $pins | tr '\n' ' ')" >&2
git check-ignore -q "$DIR" || { echo "device_wheels: $DIR is not git-ignored (it is copied beside the checkout, not committed)" >&2; exit 1; }
echo "command for the CUDA box, in a copy of this checkout with $DIR/ in it (OUT: a folder for the results; at most 600 s):"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $DIR/*.whl && export PYTHONPATH=/tmp/site:\$PWD || exit; set -o pipefail; PYTHONUNBUFFERED=1 timeout 560 python3 benchmarks/gpu_check.py --out /tmp/gc 2>&1 | tee \$OUT/gpu_check.log; rc=\$?; cp /tmp/gc/gpu_check.json /tmp/gc/table.md /tmp/gc/logs.tar.gz \$OUT/; exit \$rc"
