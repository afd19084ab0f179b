#!/usr/bin/env bash
# Set up specs-local in ./.venv: llama-cpp-python 0.3.36 for this machine,
# the package, and optionally the test tools and the development models.
#
#   bash scripts/setup.sh                 # the app
#   bash scripts/setup.sh --dev           # + pytest and friends
#   bash scripts/setup.sh --dev-models    # + the two small development GGUFs
#
# llama-cpp-python builds from source (minutes). The build flags follow the
# machine unless CMAKE_ARGS is set: CUDA when nvcc and a GPU are found, Metal on Apple
# silicon, otherwise a portable AVX2 CPU build (a `-march=native` build can
# crash with SIGILL on VMs that hide CPU features). The built wheel is kept in
# ~/.cache/specs-local/wheels keyed by the flags, so a rebuild is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0 models=0
for arg in "$@"; do
  case $arg in
    --dev) dev=1 ;;
    --dev-models) models=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --dev, --dev-models)" >&2; exit 2 ;;
  esac
done

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup.sh: Python 3.10 or newer is needed (set PYTHON=/path/to/python3.x)." >&2
  exit 2
fi
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
vpy=.venv/bin/python
"$vpy" -m pip install -q --upgrade pip

llama_version=0.3.36
if [[ -z ${CMAKE_ARGS:-} ]]; then
  if [[ $(uname -s) == Darwin ]]; then
    CMAKE_ARGS="-DGGML_METAL=on"
  elif command -v nvcc >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    # nvcc alone is not enough: CI images carry the toolkit without a GPU.
    CMAKE_ARGS="-DGGML_CUDA=on"
  else
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  fi
fi
export CMAKE_ARGS

if "$vpy" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$llama_version')" 2>/dev/null; then
  echo "llama-cpp-python $llama_version already installed"
else
  key=$(printf '%s %s %s' "$llama_version" "$CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-12)
  cache=${SPECS_LOCAL_WHEEL_CACHE:-$HOME/.cache/specs-local/wheels}/$key
  if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $llama_version with CMAKE_ARGS=\"$CMAKE_ARGS\" (several minutes)"
    mkdir -p "$cache"
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and could hand back
    # a wheel built with other flags.
    "$vpy" -m pip wheel -q --no-cache-dir --no-deps -w "$cache" "llama-cpp-python==$llama_version"
  fi
  "$vpy" -m pip install -q --no-deps "$cache"/llama_cpp_python-*.whl
fi

if [[ $dev == 1 ]]; then
  "$vpy" -m pip install -q -e ".[dev]"
else
  "$vpy" -m pip install -q -e .
fi

if [[ $models == 1 ]]; then
  dir=$(PYTHON="$vpy" bash scripts/fetch-dev-models.sh "${SPECS_LOCAL_MODELS_DIR:-$HOME/.cache/specs-dev-models}" | tail -n 1)
  echo "development models in $dir"
fi
echo "ready: .venv/bin/specs-local"
