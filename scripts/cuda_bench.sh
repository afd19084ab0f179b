#!/usr/bin/env bash
# Engine benchmark on an NVIDIA GPU machine with no network: builds
# llama-cpp-python 0.3.36 with CUDA from a slimmed sdist, writes a 0.5B-shaped
# random-weight GGUF there, and runs scripts/bench_engine.py on it.
#
# Expects in .gpu/ (prepare on a machine with PyPI access):
#   llama_cpp_python-0.3.36-slim.tar.gz   the sdist without .git, docs and
#                                         vendor/llama.cpp/{models,docs}
#   whl/*.whl                             pure-Python deps missing there (gguf, diskcache)
# Writes logs and the JSON result under $OUT (or ./cuda-bench-out).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-cuda-bench-out}
mkdir -p "$out"
arch=${CUDA_ARCH:-90}
site=/tmp/specs-site
py=${PYTHON:-python3}

"$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/whl/*.whl
export PYTHONPATH=$site:$PWD
tar xzf .gpu/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp
t0=$(date +%s)
# Flash-attention kernels are left out to keep the build within minutes; the
# benchmark compares the engine with a plain loop on the same context, so
# both run the same attention.
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  "$py" -m pip wheel -q --no-build-isolation --no-deps -w /tmp/llama-wheel /tmp/llama_cpp_python-0.3.36 \
  > "$out/build.log" 2>&1 || { tail -n 40 "$out/build.log"; exit 1; }
"$py" -m pip install -q --no-deps --target "$site" /tmp/llama-wheel/*.whl
echo "build: $(( $(date +%s) - t0 )) s"
"$py" -c "import llama_cpp as L; print('gpu offload:', L.llama_supports_gpu_offload()); print(L.llama_print_system_info().decode())"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv

"$py" scripts/tiny_gguf.py qwen /tmp/qwen-0.5b-shape.gguf --preset qwen-0.5b --dtype f16
ls -la /tmp/qwen-0.5b-shape.gguf
PYTHONUNBUFFERED=1 "$py" scripts/bench_engine.py --model /tmp/qwen-0.5b-shape.gguf --tokens ${TOKENS:-64} --rounds ${ROUNDS:-3} 2>&1 | tee "$out/bench.log"
