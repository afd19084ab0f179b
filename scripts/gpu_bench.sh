#!/usr/bin/env bash
# Engine speed on an NVIDIA GPU machine with no network, and a PROJECTION of
# SPECS against target beam search for the paper's models on that GPU.
#
#   bash scripts/gpu_bench.sh prepare [SDIST]   # here, with PyPI: fills .gpu/ (carry it)
#   bash scripts/gpu_bench.sh [all|build|models|bench|project]   # there; all is the default
#
# prepare: .gpu/llama_cpp_python-0.3.36-slim.tar.gz (scripts/trim_sdist.py on
#   SDIST, or on the sdist pip downloads; about 11 MiB) and .gpu/whl/ (gguf and
#   diskcache, which that machine lacks).
# build: llama-cpp-python 0.3.36 with CUDA for the GPU's compute capability,
#   without the flash-attention kernels (every run compared uses the same
#   attention), into $WORK/site.
# models: random-weight Q4_K_M GGUFs with the shapes of Qwen2.5-Math-1.5B (the
#   paper's draft), Qwen2.5-Math-7B (its target, and the shape of its PRM) and
#   Llama-3.1-8B (scripts/paper_gguf.py); `all` draws the f16 weights while the
#   build runs and quantises them after it.
# bench: scripts/bench_engine.py --quick on each model: the engine against a
#   plain llama.cpp decode loop at batch 1, 4 and 8, sampling on the device
#   (llama.cpp's graph) and on the host (numpy) side by side, and
#   teacher-forced tokens per second.
# project: scripts/project_latency.py on the 1.5B and 7B results and the
#   traces in scripts/traces/: a projection, labelled as one. The traces are
#   `specs-local bench --dataset gsm8k --methods specs,beam --preset cpu-dev
#   --limit 3 --trace-dir ...` on the development models (their DraftProgress
#   events left out); more traces in that folder make a better projection.
#
# Each step skips what an earlier call left in $WORK (default /tmp/specs-gpu),
# and no step starts once BUDGET_S seconds (default 540) of this call have
# passed: when one call is not enough, the same command run again goes on.
# Logs go to $OUT (default ./gpu-bench-out): build.log, models.log, gpu.txt,
# bench-SHAPE.log (ending in bench_engine.py's JSON line) and projection.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=${WORK:-/tmp/specs-gpu}
out=${OUT:-gpu-bench-out}
budget=${BUDGET_S:-540}
version=0.3.36
slim=.gpu/llama_cpp_python-$version-slim.tar.gz
shapes=(qwen2.5-math-1.5b qwen2.5-math-7b llama-3.1-8b)
start=$SECONDS

in_budget() {
    if [ $((SECONDS - start)) -ge "$budget" ]; then
        echo "$1: not started, $((SECONDS - start)) s of the $budget s budget spent; run the same command again"
        return 1
    fi
}

prepare() {
    local sdist=${1:-}
    mkdir -p .gpu/whl
    if [ -z "$sdist" ]; then
        local dir
        dir=$(mktemp -d)
        "$py" -m pip download -q --no-binary :all: --no-deps -d "$dir" "llama-cpp-python==$version"
        sdist=$(ls "$dir"/llama_cpp_python-*.tar.gz)
    fi
    "$py" scripts/trim_sdist.py "$sdist" "$slim"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl gguf==0.19.0 diskcache==5.6.3
    du -sh .gpu
}

setup() {
    mkdir -p "$work" "$out"
    [ -d "$work/deps" ] || "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/deps" .gpu/whl/*.whl
    export PYTHONPATH=$work/site:$work/deps:$PWD
    export PYTHONUNBUFFERED=1
}

build() {
    if [ -f "$work/site/llama_cpp/__init__.py" ]; then
        echo "build: done before"
        return
    fi
    in_budget build || return 1
    local arch
    arch=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '. ')}
    rm -rf "$work/src" "$work/wheel" && mkdir -p "$work/src"
    tar xzf "$slim" -C "$work/src"
    local t0=$SECONDS
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$work/wheel" "$work/src/llama_cpp_python-$version" \
        >"$out/build.log" 2>&1 || { tail -n 40 "$out/build.log"; exit 1; }
    "$py" -m pip install -q --no-deps --no-compile --target "$work/site" "$work"/wheel/llama_cpp_python-*.whl
    echo "build: sm_$arch in $((SECONDS - t0)) s" | tee -a "$out/build.log"
    "$py" -c "import llama_cpp as L; print('gpu offload:', L.llama_supports_gpu_offload())"
}

# Drawing f16 weights needs no llama.cpp; `all` runs this beside the build.
models_f16() {
    mkdir -p "$work/models"
    for shape in "${shapes[@]}"; do
        [ -f "$work/models/$shape.gguf" ] ||
            "$py" scripts/paper_gguf.py "$shape" "$work/models/$shape.gguf" --f16-only \
                --threads "${GGUF_THREADS:-$(($(nproc) / 2))}"
    done
}

models() {
    mkdir -p "$work/models"
    for shape in "${shapes[@]}"; do
        [ -f "$work/models/$shape.gguf" ] && continue
        in_budget "model $shape" || return 1
        "$py" scripts/paper_gguf.py "$shape" "$work/models/$shape.gguf" --threads "$(nproc)"
    done
}

bench() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    for shape in "${shapes[@]}"; do
        local log=$out/bench-$shape.log
        if [ -s "$log" ] && tail -n 1 "$log" | grep -q '^{'; then
            echo "bench $shape: done before"
            continue
        fi
        [ -f "$work/models/$shape.gguf" ] || { echo "bench $shape: no model yet"; continue; }
        in_budget "bench $shape" || return 1
        echo "== $shape ($((SECONDS - start)) s)"
        "$py" scripts/bench_engine.py --model "$work/models/$shape.gguf" --tokens "${TOKENS:-64}" \
            --rounds "${ROUNDS:-3}" --sampling both --quick 2>&1 | tee "$log"
    done
}

project() {
    local draft=$out/bench-qwen2.5-math-1.5b.log target=$out/bench-qwen2.5-math-7b.log
    if ! tail -n 1 "$draft" 2>/dev/null | grep -q '^{' || ! tail -n 1 "$target" 2>/dev/null | grep -q '^{'; then
        echo "project: needs the 1.5B and 7B benchmarks first"
        return 1
    fi
    # The paper's PRM (Skywork-o1-Open-PRM-Qwen-2.5-7B) has the 7B's shape.
    "$py" scripts/project_latency.py --draft "$draft" --target "$target" --prm "$target" \
        --traces scripts/traces | tee "$out/projection.txt"
}

case "${1:-all}" in
    prepare) prepare "${2:-}" ;;
    build) setup && build ;;
    models) setup && models ;;
    bench) setup && bench ;;
    project) setup && project ;;
    all)
        setup
        models_f16 >"$out/models.log" 2>&1 &
        writer=$!
        build
        wait "$writer" || { tail -n 20 "$out/models.log"; exit 1; }
        models && bench && project
        echo "all: $((SECONDS - start)) s"
        ;;
    *)
        echo "usage: $0 prepare [SDIST] | all | build | models | bench | project" >&2
        exit 2
        ;;
esac
