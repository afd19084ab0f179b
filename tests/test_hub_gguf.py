"""GGUF headers, quantisation names, sizes, and where app.hub finds a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app import hub, transfer
from app.config import ModelEntry, dump_toml, load_catalog
from app.presets import resolve_preset
from engines.base import ModelLoadError
from engines.gguf_info import MAGIC, attention_shape, check_gguf, read_header

if TYPE_CHECKING:
    from fakehub import FakeHub


@pytest.fixture
def qwen_file(tmp_path: Path, tiny_gguf: Callable[..., bytes]) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_gguf("qwen"))
    return path


def test_header_of_a_tiny_model(qwen_file: Path) -> None:
    header = read_header(qwen_file)
    assert header.version == 3 and header.architecture == "qwen2"
    assert header.metadata["tokenizer.ggml.model"] == "gpt2"
    # 256 byte tokens, the merges, and 4 control tokens (scripts/tiny_gguf.py)
    n_tokens = header.array_lengths["tokenizer.ggml.tokens"]
    assert n_tokens == header.array_lengths["tokenizer.ggml.token_type"] > 256
    assert "tokenizer.ggml.tokens" not in header.metadata  # long string arrays are skipped


def test_attention_shape_and_kv_bytes_per_token(qwen_file: Path) -> None:
    shape = attention_shape(read_header(qwen_file))
    # tiny_gguf's shape: 2 layers, 4 heads of 64 / 4 = 16 dims, 2 KV heads, trained on 512 tokens
    assert (shape.n_layer, shape.n_head, shape.kv_heads_per_layer) == (2, 4, (2, 2))
    assert (shape.head_dim_k, shape.head_dim_v, shape.context_length) == (16, 16, 512)
    assert shape.kv_bytes_per_token() == 2 * 2 * (16 + 16) * 2
    assert shape.kv_bytes_per_token(bytes_per_element=1) == 2 * 2 * (16 + 16)


@pytest.mark.real
def test_kv_bytes_of_the_development_models(dev_model_small: Path, dev_model_large: Path) -> None:
    # f16 KV per token from the models' configs: layers x 2 KV heads x (K + V) head dims x 2 bytes
    for path, kv_bytes in ((dev_model_small, 24 * 2 * (64 + 64) * 2), (dev_model_large, 28 * 2 * (128 + 128) * 2)):
        header = read_header(path)
        assert header.array_lengths["tokenizer.ggml.tokens"] == 151_936
        assert attention_shape(header).kv_bytes_per_token() == kv_bytes


def test_not_gguf_and_damaged_headers_are_load_errors(tmp_path: Path, qwen_file: Path) -> None:
    text = tmp_path / "model.gguf"
    text.write_text("<html>Sign in to continue</html>")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        check_gguf(text)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(qwen_file.read_bytes()[:2000])  # stops inside the vocabulary
    check_gguf(cut)  # the magic is fine...
    with pytest.raises(ModelLoadError, match=r"is cut short inside its header \(2,000 bytes\)"):
        read_header(cut)  # ...the header is not
    assert qwen_file.read_bytes()[:4] == MAGIC


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Qwen2.5-Math-7B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("Llama3.1-8B-PRM-Deepseek-Data.Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("Meta-Llama-3.1-8B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("phi-2.Q8_0.gguf", "Q8_0"),
        ("tinyllama-1.1b-f16.gguf", "F16"),
        ("Qwen2-7B.gguf", None),
    ],
)
def test_quantisation_from_the_file_name(name: str, quant: str | None) -> None:
    assert hub.quantisation(name) == quant


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "?"),
        (512, "512 B"),
        (443_008, "443 kB"),
        (986_000_000, "986 MB"),
        (4_680_000_000, "4.68 GB"),
        (12_100_000_000, "12.1 GB"),
    ],
)
def test_format_size(n: int | None, text: str) -> None:
    assert hub.format_size(n) == text


def test_resolution_order_is_path_then_models_dir_then_cache(
    fake_hub: FakeHub, hub_env: Path, tiny_gguf: Callable[..., bytes]
) -> None:
    data = tiny_gguf("qwen")
    fake_hub.add_repo("org/m-GGUF", {"m.gguf": data})
    entry = ModelEntry(name="m", repo="org/m-GGUF", file="m.gguf")
    assert hub.find_model(entry) is None
    in_cache = transfer.fetch(transfer.remote_file("org/m-GGUF", "m.gguf"), echo=lambda _: None)
    assert hub.find_model(entry) == in_cache
    in_models_dir = hub_env / "models" / "m.gguf"
    in_models_dir.parent.mkdir()
    in_models_dir.write_bytes(data)
    assert hub.find_model(entry) == in_models_dir
    own = hub_env / "elsewhere.gguf"
    own.write_bytes(data)
    assert hub.find_model(entry.model_copy(update={"path": str(own)})) == own
    fake_hub.requests.clear()
    hub.find_model(entry)
    assert fake_hub.requests == []  # resolution never asks the network


def test_missing_models_of_a_preset_each_once(hub_env: Path, tiny_gguf: Callable[..., bytes]) -> None:
    (hub_env / "models").mkdir()
    (hub_env / "models" / "small.gguf").write_bytes(tiny_gguf("qwen"))
    (hub_env / "user-models.toml").write_text(
        dump_toml(
            {
                "models": {
                    "small": {"file": "small.gguf", "local": True},
                    "big": {"repo": "org/big-GGUF", "file": "big.gguf"},
                },
                "presets": {
                    "judge-on-target": {"draft": "small", "target": "big", "reward": {"kind": "judge", "model": "big"}},
                },
            }
        )
    )
    catalog = load_catalog()
    assert [m.name for m in resolve_preset(catalog, "judge-on-target").missing] == ["big"]


def test_a_file_without_tensors_is_whole(tmp_path: Path) -> None:
    # Vocabulary-only GGUFs (llama.cpp ships some) end with their metadata, unpadded.
    import gguf

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    header = read_header(path)
    assert header.n_tensors == 0 and header.data_end <= path.stat().st_size


def test_the_tensor_table_says_how_long_a_whole_file_is(qwen_file: Path, tmp_path: Path) -> None:
    data = qwen_file.read_bytes()
    assert read_header(qwen_file).data_end == len(data)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1])
    with pytest.raises(ModelLoadError, match=rf"is cut short \({len(data) - 1:,} of the {len(data):,} bytes"):
        read_header(cut)
