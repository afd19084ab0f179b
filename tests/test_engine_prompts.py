"""Chat templates: the GGUF's own, rendered in a sandbox; ChatML without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import EngineError
from engines.prompts import CHATML_TEMPLATE, render_chat


def test_format_chat_uses_the_gguf_template(tiny_qwen: Path, tiny_llama: Path, open_model) -> None:
    qwen, llama = open_model(tiny_qwen, n_seq_max=1), open_model(tiny_llama, n_seq_max=1)
    assert qwen.format_chat("Be brief.", "What is 2 + 2?") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert llama.format_chat("Be brief.", "What is 2 + 2?") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2 + 2? [/INST]"
    )
    # Control tokens in the text are single tokens, and a BOS written by the
    # template is not doubled by the vocabulary's own.
    tokens = qwen.prompt_tokens(qwen.format_chat("", "hi"))
    assert tokens[0] == qwen.tokenize("<|im_start|>")[0] and len(qwen.tokenize("<|im_start|>")) == 1
    llama_tokens = llama.prompt_tokens(llama.format_chat("", "hi"))
    assert llama_tokens[0] == 1 and llama_tokens[1] != 1


def test_chatml_when_the_gguf_has_no_template(tiny_gguf_writer, tmp_path: Path, open_model) -> None:
    model = open_model(tiny_gguf_writer.write_qwen_like(tmp_path / "bare.gguf", chat_template=None), n_seq_max=1)
    assert model.chat_template is None
    assert model.format_chat("", "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_templates_run_in_a_sandbox() -> None:
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EngineError, match="cannot render"):
        render_chat(escape, [{"role": "user", "content": "x"}], add_generation_prompt=True)
    mutate = "{% set m = messages %}{{ m.append({'role': 'user', 'content': 'x'}) }}"
    with pytest.raises(EngineError, match="cannot render"):
        render_chat(mutate, [{"role": "user", "content": "x"}], add_generation_prompt=True)


def test_a_template_that_refuses_a_conversation_is_an_engine_error(tiny_llama: Path, open_model) -> None:
    llama = open_model(tiny_llama, n_seq_max=1)
    turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(EngineError, match="roles must alternate"):
        llama.render_chat(turns, add_generation_prompt=True)


def test_templates_see_what_hugging_face_templates_expect() -> None:
    template = (
        "{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}{{ bos_token }}{{ strftime_now('%Y') | length }}"
    )
    rendered = render_chat(template, [{"role": "user", "content": "é"}], add_generation_prompt=False, bos_token="<s>")
    assert rendered == '"é"<s>4'
    # trim_blocks and lstrip_blocks, as transformers renders
    assert render_chat(CHATML_TEMPLATE, [], add_generation_prompt=True) == "<|im_start|>assistant\n"
    assert render_chat("  {% if true %}\nx{% endif %}", [], add_generation_prompt=False) == "x"
