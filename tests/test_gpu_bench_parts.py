"""The parts of scripts/gpu_bench.sh that run without a GPU: the trimmed source
archive, the paper-shaped GGUF writer (at a tiny shape) and the latency projection."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # paper_gguf imports tiny_gguf beside it
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- trimmed sdist ---------------------------------------------------------------------

KEPT = ("CMakeLists.txt", "llama_cpp/llama_cpp.py", "vendor/llama.cpp/src/llama.cpp", "vendor/llama.cpp/tools/x.cpp")
DROPPED = (
    ".git/HEAD",
    "docs/index.md",
    "vendor/llama.cpp/.git",
    "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",
    "vendor/llama.cpp/docs/build.md",
    "vendor/llama.cpp/media/logo.png",
)


def _fake_sdist(root: Path) -> Path:
    top = root / "llama_cpp_python-0.3.36"
    for name in KEPT + DROPPED:
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(b"x" * 100)
    return top


def _names(archive: Path) -> set[str]:
    with tarfile.open(archive) as t:
        return {m.name for m in t.getmembers() if m.isfile()}


@pytest.mark.parametrize("as_archive", [True, False])
def test_trimmed_sdist_keeps_the_build_and_drops_docs_models_and_git(tmp_path: Path, as_archive: bool) -> None:
    trim = _script("trim_sdist")
    top = _fake_sdist(tmp_path / "src")
    source = top
    if as_archive:
        source = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
        with tarfile.open(source, "w:gz") as t:
            t.add(top, arcname=top.name)
    target = tmp_path / "out" / "slim.tar.gz"
    kept, skipped = trim.trim(source, target)
    names = _names(target)
    assert names == {f"llama_cpp_python-0.3.36/{n}" for n in KEPT}
    assert skipped >= len(DROPPED)
    assert kept >= len(KEPT)


def test_trimmed_sdist_over_the_limit_is_an_error(tmp_path: Path) -> None:
    trim = _script("trim_sdist")
    top = _fake_sdist(tmp_path / "src")
    (top / "vendor/llama.cpp/src/big.bin").write_bytes(np.random.default_rng(0).bytes(300_000))
    target = tmp_path / "slim.tar.gz"
    with pytest.raises(SystemExit, match=r"over the 0\.1 MiB limit"):
        trim.trim(top, target, limit_mib=0.1)
    assert not target.exists()


# --- paper-shaped GGUFs ------------------------------------------------------------------


def test_logit_scale_gives_the_asked_entropy() -> None:
    paper = _script("paper_gguf")
    z = np.random.default_rng(0).standard_normal(5000)
    for entropy in (0.3, 1.0, 3.0):
        x = paper.logit_scale(5000, entropy) * z
        p = np.exp(x - x.max())
        p /= p.sum()
        assert float(-(p * np.log(np.where(p > 0, p, 1))).sum()) == pytest.approx(entropy, abs=1e-6)


def test_paper_gguf_at_a_tiny_shape_is_q4_k_m_and_peaked(tmp_path: Path, open_model) -> None:
    """The writer's whole path (f16 first, then llama_model_quantize) at a shape
    small enough for a test: the file is Q4_K_M and its next-token
    distributions are peaked, not flat."""
    import gguf

    from engines.base import SampleParams

    paper = _script("paper_gguf")
    shape = paper.PaperShape("qwen2", 256, 2, 4, 2, 512, 1024, 512, 10000.0, False, True)
    target = tmp_path / "paper.gguf"
    paper.write(shape, target, entropy=0.5, threads=2, f16_only=True)
    assert paper.f16_path(target).exists() and not target.exists()
    paper.write(shape, target, entropy=0.5, threads=2)  # quantises the f16 file left above
    assert target.exists() and not paper.f16_path(target).exists()
    reader = gguf.GGUFReader(target)
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert {"Q4_K", "Q6_K"} <= {t.tensor_type.name for t in reader.tensors}

    model = open_model(target, n_seq_max=8)
    seq = model.start(list(range(10, 30)))
    drafts = model.sample([seq], 4, SampleParams(temperature=1.0, max_tokens=24, seed=0, delimiter=None))[0]
    logprobs = np.concatenate([d.logprobs for d in drafts])
    # Sampled at T=1, -mean(logprob) estimates the mean entropy: far below the
    # flat distribution's log(1024) = 6.9 nats.
    assert -logprobs.mean() < 2.0


# --- latency projection ---------------------------------------------------------------------


def _bench_json(path: Path, step_ms: dict[int, float], forced_ms: float) -> Path:
    batch = {str(b): {"engine_tok_s": b / (ms / 1000), "plain_tok_s": 1.0, "ratio": 1.0} for b, ms in step_ms.items()}
    path.write_text("some log line\n" + json.dumps({"batch": batch, "score_tok_s": 1000 / forced_ms}) + "\n")
    return path


def _trace(path: Path, method: str, steps: list[tuple[str, list[int]]], stats: dict[str, int]) -> Path:
    events = [{"event": "SearchStarted", "t": 0.0, "method": method, "question": "q", "settings": {}, "models": {}}]
    for i, (origin, lengths) in enumerate(steps):
        candidates = [
            {"id": f"{i}.{j}", "parent": "", "text": "", "n_tokens": n, "stop": "delimiter"}
            for j, n in enumerate(lengths)
        ]
        events.append(
            {
                "event": "CandidatesDrafted",
                "t": 1.0,
                "step": i,
                "origin": origin,
                "candidates": candidates,
                "seconds": 0.0,
            }
        )
    events.append({"event": "Finished", "t": 2.0, "answer": "1", "solution": "", "stats": {"models": {}, **stats}})
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def test_projection_follows_its_formula(tmp_path: Path) -> None:
    proj = _script("project_latency")
    draft = proj.Costs.from_bench(_bench_json(tmp_path / "d.json", {1: 10.0, 4: 12.0, 8: 16.0}, 0.1))
    target = proj.Costs.from_bench(_bench_json(tmp_path / "t.json", {1: 40.0, 4: 44.0, 8: 52.0}, 0.5))
    prm = proj.Costs.from_bench(_bench_json(tmp_path / "p.json", {1: 40.0}, 1.0))
    assert draft.step(2) == pytest.approx(10.0e-3 + 2.0e-3 / 3)  # between B=1 and B=4
    assert draft.step(12) == pytest.approx(20.0e-3)  # past 8, on the line through 4 and 8
    assert draft.generate([1, 3]) == pytest.approx(draft.step(2) + 2 * draft.step(1))

    # SPECS: 3 accepted steps, 2 from the draft, 1 deferral (a draft step redone by the target).
    specs = _trace(
        tmp_path / "s.jsonl",
        "specs",
        [("draft", [2, 2]), ("draft", [4, 2]), ("target", [3, 3]), ("draft", [2, 2])],
        {"steps": 3, "draft_steps": 2, "target_steps": 1, "deferrals": 1},
    )
    beam = _trace(
        tmp_path / "b.jsonl",
        "beam",
        [("target", [3, 3]), ("target", [1, 1])],
        {"steps": 2, "draft_steps": 0, "deferrals": 0},
    )
    searches = [proj.read_search(p) for p in proj.trace_files([tmp_path])]
    p = proj.project(searches, draft, target, prm)
    d_steps = [[2, 2], [4, 2], [2, 2]]
    d = sum(draft.generate(L) + (0.5e-3 + 1.0e-3) * sum(L) for L in d_steps) / 3
    t = (target.generate([3, 3]) + 6e-3 + target.generate([1, 1]) + 2e-3) / 2
    assert p.acceptance == pytest.approx(2 / 3) and p.deferral == pytest.approx(1 / 3)
    assert p.specs_seconds == pytest.approx(3 * ((2 / 3 + 1 / 3) * d + (1 / 3) * t))
    assert p.beam_seconds == pytest.approx(2 * t)
    fixed = proj.project(searches, draft, target, prm, acceptance=0.9, deferral=0.0)
    assert fixed.specs_seconds == pytest.approx(3 * (0.9 * d + 0.1 * t))
    assert specs.exists() and beam.exists()


def test_projection_on_traces_of_scripted_searches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The script end to end on real traces (SPECS and beam search on the
    scripted engines), its output labelled as a projection."""
    from app.search import run
    from app.search.settings import SearchSettings
    from app.search.trace import TraceWriter
    from engines.testing.scripted import ARITHMETIC_QUESTION, scripted_engines

    proj = _script("project_latency")
    traces = tmp_path / "traces"
    traces.mkdir()
    for method in ("specs", "beam"):
        engines = scripted_engines()
        with TraceWriter(traces / f"p0.{method}.jsonl") as sink:
            run(method, ARITHMETIC_QUESTION, engines, SearchSettings(seed=1), emit=sink, clock=engines.clock)
    bench = [
        _bench_json(tmp_path / f"{n}.json", {1: ms, 4: ms * 1.1, 8: ms * 1.3}, ms / 20)
        for n, ms in (("d", 5.0), ("t", 20.0))
    ]
    proj.main(["--draft", str(bench[0]), "--target", str(bench[1]), "--prm", str(bench[1]), "--traces", str(traces)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PROJECTION (")
    result = json.loads(out[-1])
    assert result["projection"] is True
    assert result["specs_seconds"] > 0 and result["beam_seconds"] > 0
    assert result["ratio"] == pytest.approx(result["specs_seconds"] / result["beam_seconds"], rel=1e-3)
    with pytest.raises(SystemExit, match="--acceptance must be between 0 and 1"):
        proj.main(
            [
                "--draft",
                str(bench[0]),
                "--target",
                str(bench[1]),
                "--prm",
                str(bench[1]),
                "--traces",
                str(traces),
                "--acceptance",
                "2",
            ]
        )


def test_bench_engine_compares_both_sampling_paths(
    tmp_path: Path, tiny_gguf_writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """What gpu_bench.sh runs, at a tiny size on the CPU backend: both paths side
    by side, each with its rate, its ratio to the plain loop and its CPU cost."""
    path = tiny_gguf_writer.write_qwen_like(
        tmp_path / "tiny-4k.gguf", shape=tiny_gguf_writer.Shape(context_length=4096), seed=3, weight_scale=0.1
    )
    bench = _script("bench_engine")
    bench.main(["--model", str(path), "--threads", "1", "--tokens", "4", "--rounds", "1", "--quick", "--json"])
    import llama_cpp

    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    chosen = "device" if llama_cpp.llama_supports_gpu_offload() else "host"  # what auto picks
    assert result["sampling"] == chosen
    assert set(result["batch"]) == {"1", "4", "8"}
    for row in result["batch"].values():
        for path_name in ("host", "device"):
            assert row[f"{path_name}_tok_s"] > 0 and row[f"{path_name}_cpu_ms_per_token"] > 0
        assert row["engine_tok_s"] == row[f"{chosen}_tok_s"]
    assert result["score_tok_s"] > 0 and "decoded_rows" not in result  # --quick
