"""Presets whose roles are served: the catalog's server entries, the checks made
before a search starts (one sentence, exit 2), the same search as in process,
and a server that dies mid-search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakevllm import DROP, FakeVLLM
from pydantic import ValidationError

from app.cli import main
from app.config import Catalog, ModelEntry, load_catalog
from app.presets import resolve_preset
from app.runtime import open_engines
from app.search import run
from app.search.events import CandidatesDrafted, Finished, StepAccepted
from app.search.trace import TraceWriter, read_trace

SEARCH = "search = { max_steps = 3, max_step_tokens = 8, n = 2, temperature = 0.0 }"


def served_catalog(path: Path, draft: str, target: str, *, reward: str = "judge", extra: str = "") -> Path:
    """A user catalog with a `served` preset on the given server URLs."""
    path.write_text(
        f"""
[models.served-draft]
url = "{draft}"
served = "tiny"

[models.served-target]
url = "{target}"
served = "tiny"

[presets.served]
draft = "served-draft"
target = "served-target"
reward = {{ kind = "{reward}", model = "served-target" }}
{SEARCH}
{extra}
""",
        encoding="utf-8",
    )
    return path


def local_catalog(path: Path, gguf: Path) -> Path:
    path.write_text(
        f"""
[models.tiny-local]
path = "{gguf}"
file = "{gguf.name}"
context = 512

[presets.local]
draft = "tiny-local"
target = "tiny-local"
reward = {{ kind = "judge", model = "tiny-local" }}
{SEARCH}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def server(tiny_qwen, open_model):
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=32), served=["tiny"]) as fake:
        yield fake


def test_server_entries_validate() -> None:
    entry = ModelEntry(name="t", url=["http://a:8000/v1", "http://b:8000/v1"])
    assert entry.remote and entry.urls == ["http://a:8000/v1", "http://b:8000/v1"] and entry.served_name == "t"
    assert ModelEntry(name="t", url="http://a/v1", served="Qwen/Qwen2.5-Math-7B-Instruct").served_name.startswith(
        "Qwen/"
    )
    with pytest.raises(ValidationError, match="names no file"):
        ModelEntry(name="t", url="http://a/v1", file="x.gguf", local=True)
    with pytest.raises(ValidationError, match="`served` belongs to a server entry"):
        ModelEntry(name="t", file="x.gguf", local=True, served="x")
    with pytest.raises(ValidationError, match="needs a `file`"):
        ModelEntry(name="t", repo="a/b")
    models = {"s": {"url": "http://a/v1"}, "f": {"file": "f.gguf", "local": True}}
    with pytest.raises(ValidationError, match="pooled-prm reward is a PRM served by vLLM"):
        Catalog.model_validate(
            {
                "default_preset": "p",
                "models": models,
                "presets": {"p": {"target": "f", "reward": {"kind": "pooled-prm", "model": "f"}}},
            }
        )
    with pytest.raises(ValidationError, match="hidden states, which a server does not return"):
        Catalog.model_validate(
            {
                "default_preset": "p",
                "models": models,
                "presets": {"p": {"target": "s", "reward": {"kind": "value-head", "model": "s", "head": "h"}}},
            }
        )


def test_a_served_preset_needs_no_download(server, tmp_path) -> None:
    catalog = load_catalog(served_catalog(tmp_path / "m.toml", server.url, server.url))
    preset = resolve_preset(catalog, "served")
    assert preset.ready and preset.remote and preset.missing == []


def solve(preset_name: str, catalog_file: Path, method: str) -> tuple[Finished, list[object]]:
    catalog = load_catalog(catalog_file)
    preset = resolve_preset(catalog, preset_name)
    settings = preset.preset.settings(seed=5)
    events: list[object] = []
    with open_engines(preset, settings, threads=1) as engines:
        finished = run(method, "What is 12 + 30?", engines, settings, emit=events.append)
    return finished, events


@pytest.mark.parametrize("method", ["specs", "beam", "greedy"])
def test_the_same_search_served_and_in_process(method: str, server, tiny_qwen, tmp_path) -> None:
    """Greedy sampling: the same steps, the same answer, the same accept/defer
    decisions over the fake (llama.cpp behind HTTP) as in process."""
    served, served_events = solve("served", served_catalog(tmp_path / "s.toml", server.url, server.url), method)
    local, local_events = solve("local", local_catalog(tmp_path / "l.toml", tiny_qwen), method)

    def steps(events: list[object]) -> list[tuple[str, str]]:
        return [(e.origin, e.text) for e in events if isinstance(e, StepAccepted)]

    assert steps(served_events) == steps(local_events) and steps(local_events)
    assert served.solution == local.solution
    assert served.stats.steps == local.stats.steps
    assert served.error is None


def test_a_server_dying_mid_search_ends_it_with_what_it_found(tiny_qwen, open_model, tmp_path) -> None:
    fake = FakeVLLM(open_model(tiny_qwen, n_seq_max=32), served=["tiny"])
    catalog = load_catalog(served_catalog(tmp_path / "s.toml", fake.url, fake.url))
    preset = resolve_preset(catalog, "served")
    settings = preset.preset.settings(seed=5, max_steps=6)
    trace = tmp_path / "run.jsonl"
    drafted = 0

    def emit(event: object) -> None:
        nonlocal drafted
        writer(event)
        if isinstance(event, CandidatesDrafted):
            drafted += 1
            if drafted == 2:
                fake.fail(*[DROP] * 50)  # every later request: the connection drops

    with TraceWriter(trace) as writer, open_engines(preset, settings, threads=1) as engines:
        finished = run("specs", "What is 12 + 30?", engines, settings, emit=emit)
    fake.stop()
    assert finished.error is not None and f"server at {fake.url} dropped the connection" in finished.error
    assert not finished.cancelled and finished.solution  # the first step is kept
    last = list(read_trace(trace))[-1]
    assert isinstance(last, Finished) and last.error == finished.error


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_servers_are_refused_before_the_search_in_one_sentence(
    server, tiny_qwen, tiny_llama, open_model, tmp_path, monkeypatch, capsys
) -> None:
    ask = ["solve", "What is 1 + 1?", "--preset", "served"]
    catalog = tmp_path / "m.toml"
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))

    # Nothing listens there.
    dead = FakeVLLM(open_model(tiny_qwen, n_seq_max=4), served=["tiny"])
    dead.stop()
    served_catalog(catalog, server.url, dead.url)
    code, err = run_cli(ask, capsys)
    assert code == 2 and f"server at {dead.url} refused the connection" in err and "Traceback" not in err

    # A server that serves another name.
    served_catalog(catalog, server.url, server.url)
    catalog.write_text(catalog.read_text().replace('served = "tiny"', 'served = "other"'))
    code, err = run_cli(ask, capsys)
    assert code == 2 and "does not serve 'other' (it serves tiny); fix the model's `served` name" in err

    # Without prompt_logprobs.
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=8), served=["tiny"], prompt_logprobs=False) as plain:
        served_catalog(catalog, plain.url, plain.url)
        code, err = run_cli(ask, capsys)
    assert code == 2 and "did not return prompt log-probabilities (prompt_logprobs)" in err

    # A key that the server wants.
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=8), served=["tiny"], api_key="k") as keyed:
        served_catalog(catalog, keyed.url, keyed.url)
        code, err = run_cli(ask, capsys)
        assert code == 2 and "unauthorized (401); set the API key it expects in SPECS_LOCAL_API_KEY" in err
        monkeypatch.setenv("MY_KEY", "k")
        catalog.write_text(catalog.read_text().replace('served = "tiny"', 'served = "tiny"\napi_key_env = "MY_KEY"'))
        code, err = run_cli([*ask, "--method", "greedy", "--max-steps", "1"], capsys)
        assert code == 0, err

    # A draft of another family: a llama vocabulary against the served qwen.
    with FakeVLLM(open_model(tiny_llama, n_seq_max=8), served=["tiny"]) as other:
        served_catalog(catalog, other.url, server.url)
        code, err = run_cli(ask, capsys)
    assert code == 2 and "cannot propose tokens for the target served-target: they split the same text" in err


def test_doctor_checks_each_server_and_the_served_vocabularies(
    server, tiny_qwen, tiny_llama, open_model, tmp_path, monkeypatch, capsys
) -> None:
    dead = FakeVLLM(open_model(tiny_qwen, n_seq_max=4), served=["tiny"])
    dead.stop()
    with (
        FakeVLLM(open_model(tiny_qwen, n_seq_max=8), served=["tiny"], prompt_logprobs=False) as plain,
        FakeVLLM(open_model(tiny_llama, n_seq_max=8), served=["tiny"]) as other,
    ):
        extra = f"""
[models.other-family]
url = "{other.url}"
served = "tiny"

[models.gone]
url = ["{server.url}", "{dead.url}"]
served = "tiny"

[models.plain]
url = "{plain.url}"
served = "tiny"

[presets.mixed]
draft = "other-family"
target = "served-target"
reward = {{ kind = "judge", model = "gone" }}

[presets.plain]
target = "plain"
reward = {{ kind = "judge", model = "plain" }}
"""
        catalog = served_catalog(tmp_path / "m.toml", server.url, server.url, extra=extra)
        monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
        assert main(["doctor", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert main(["doctor"]) == 0
        text = capsys.readouterr().out
    checks = {(c["model"], c["url"]): c["problem"] for c in report["servers"]["checks"]}
    assert checks[("served-target", server.url)] is None
    assert "refused the connection" in checks[("gone", dead.url)] and checks[("gone", server.url)] is None
    assert "did not return prompt log-probabilities" in checks[("plain", plain.url)]
    vocabularies = report["servers"]["vocabularies"]
    assert vocabularies["served"] is None and "split the same text differently" in vocabularies["mixed"]
    assert report["presets"]["plain"]["models"] == []  # nothing of it loads here
    assert f"served-target: tiny at {server.url}: ok, 512-token context" in text
    assert "mixed vocabulary: the draft other-family cannot propose tokens" in text


def test_a_served_entrys_context_can_only_lower_the_servers(server, tmp_path) -> None:
    path = served_catalog(tmp_path / "m.toml", server.url, server.url)
    path.write_text(path.read_text().replace("[models.served-target]\n", "[models.served-target]\ncontext = 256\n"))
    preset = resolve_preset(load_catalog(path), "served")
    with open_engines(preset, preset.preset.settings()) as engines:
        assert engines.target.n_ctx == 256
        assert engines.draft is not None and engines.draft.n_ctx == server.max_model_len == 512
