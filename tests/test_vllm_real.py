"""Against a real vLLM server of the 0.5B development model (float32 weights
dequantized from the GGUF; scripts/vllm-dev-server.sh starts one). Skipped
unless SPECS_LOCAL_VLLM_URL names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from engines.remote.client import ServerPool
from engines.remote.model import RemoteModel

pytestmark = [pytest.mark.vllm, pytest.mark.real]
URL = os.environ.get("SPECS_LOCAL_VLLM_URL")
SERVED = os.environ.get("SPECS_LOCAL_VLLM_SERVED", "qwen-0.5b")
SOLUTION = (
    "To find the sum of 12 and 30, we add the tens and the ones separately.\n\n"
    "12 + 30 = 42.\n\nSo the answer is $\\boxed{42}$."
)
# Measured on this model: llama.cpp's Q4_K_M kernels against vLLM's float32 on
# the same (dequantized) weights differ by at most 0.18 nats per token, 0.018
# on average, over this solution's 44 tokens.
MAX_DIFF, MEAN_DIFF = 0.3, 0.04


@pytest.fixture(scope="module")
def served() -> RemoteModel:
    if not URL:
        pytest.skip("SPECS_LOCAL_VLLM_URL is not set (scripts/vllm-dev-server.sh starts a server)")
    return RemoteModel(ServerPool([URL]), SERVED)


def test_teacher_forcing_matches_the_local_engine(served, dev_model_small, open_model) -> None:
    local = open_model(dev_model_small, n_seq_max=4)
    prompt = local.format_chat("Please reason step by step, and put your final answer within \\boxed{}.", "12 + 30?")
    assert served.prompt_tokens(prompt) == local.prompt_tokens(prompt)
    tokens = local.tokenize(SOLUTION)
    assert served.tokenize(SOLUTION) == tokens
    [mine] = served.score([(served.start(prompt), tokens)])
    [theirs] = local.score([(local.start(prompt), tokens)])
    diff = np.abs(np.array(mine.logprobs) - np.array(theirs.logprobs))
    assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF


def test_solve_with_the_target_on_the_server(served, dev_model_small, tmp_path: Path, monkeypatch, capsys) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f"""
[models.served-dev]
url = "{URL}"
served = "{SERVED}"

[presets.served]
target = "served-dev"
reward = {{ kind = "judge", model = "served-dev" }}
search = {{ max_steps = 4, max_step_tokens = 96, temperature = 0.0 }}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    code = main(["solve", "What is 12 + 30?", "--preset", "served", "--method", "greedy", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["answer"] == "42"
