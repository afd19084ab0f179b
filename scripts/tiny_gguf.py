"""Write small random-weight GGUF models that real llama.cpp loads and runs.

Two tokenizer families are covered, the two the engine must handle:

- `write_qwen_like`: qwen2 architecture, a GPT-2 byte-level BPE with a few
  merges (among them "\\n\\n" and ".\\n\\n", so a single token can carry the step
  delimiter), ChatML control tokens, EOS `<|im_end|>`, no BOS, and a ChatML
  chat template in the metadata.
- `write_llama_like`: llama architecture, a SentencePiece vocabulary with byte
  fallback, BOS `<s>` / EOS `</s>`, and a Llama-2 style chat template.

Weights are random (normal, `weight_scale` standard deviation), so outputs are
gibberish, but deterministic for a seed: tests compare batched results with
one-at-a-time results rather than with fixed numbers. `output_bias` (qwen only)
raises chosen tokens' logits so that delimiters and EOS come up often enough
for stop-reason tests. The shape is a parameter, so the same writer makes a
0.5B-shaped model (`--preset qwen-0.5b`) for benchmarks on machines without
the real models.

    python scripts/tiny_gguf.py qwen /tmp/tiny-qwen.gguf
    python scripts/tiny_gguf.py qwen /tmp/big.gguf --preset qwen-0.5b --dtype f16
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama-2's template, which alternates roles strictly and folds the system
# prompt into the first user turn (it exercises `raise_exception` and `bos_token`).
LLAMA2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- set content = (system if loop.first else '') + message['content'] %}"
    "{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{%- else %}{{- ' ' + message['content'].strip() + ' ' + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

QWEN_CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>")
# Pairs merged in this order; each merge adds the joined token. They give the
# qwen-like vocabulary multi-byte tokens that matter to the engine: the step
# delimiter alone and glued to a period, and single-token Yes/No answers.
QWEN_MERGES = (
    ("\n", "\n"),
    (".", "\n\n"),
    (" ", "t"),
    (" t", "h"),
    (" th", "e"),
    ("e", "s"),
    ("Y", "es"),
    ("y", "es"),
    (" ", "Yes"),
    ("N", "o"),
    ("n", "o"),
    (" ", "No"),
)
LLAMA_PIECES = ("▁", "▁a", "▁the", "▁step", "+", "-", "ки", "▁Yes", "▁No", "Yes", "No")

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


@dataclass(frozen=True)
class Shape:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2
    n_ff: int = 128
    context_length: int = 512


PRESETS = {
    "tiny": Shape(),
    # Qwen2.5-0.5B's shape (494M parameters with its 151,936-token vocabulary).
    "qwen-0.5b": Shape(n_embd=896, n_layer=24, n_head=14, n_kv_head=2, n_ff=4864, context_length=32768),
}


def add_shape(writer: gguf.GGUFWriter, shape: Any, *, rope_base: float, file_type: gguf.LlamaFileType) -> None:
    """The hyperparameters llama.cpp reads for a Qwen2- or Llama-shaped model
    (`shape`: a Shape here, a PaperShape in paper_gguf.py)."""
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_kv_head)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(rope_base)
    writer.add_file_type(file_type)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _add_weights(
    writer: gguf.GGUFWriter,
    n_vocab: int,
    shape: Shape,
    *,
    seed: int,
    dtype: str,
    weight_scale: float,
    qkv_bias: bool,
    output_bias: np.ndarray | None,
    tie_output: bool,
) -> None:
    rng = np.random.default_rng(seed)
    head_dim = shape.n_embd // shape.n_head
    matrix_type = np.float16 if dtype == "f16" else np.float32

    def matrix(*dims: int) -> np.ndarray:
        values = rng.standard_normal(dims, dtype=np.float32)
        values *= weight_scale
        return values.astype(matrix_type, copy=False)

    def vector(*dims: int) -> np.ndarray:  # norms and biases stay f32, as llama.cpp expects
        return (rng.standard_normal(dims, dtype=np.float32) * weight_scale).astype(np.float32)

    ones = np.ones(shape.n_embd, np.float32)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    add_shape(writer, shape, rope_base=10000.0, file_type=file_type)
    writer.add_tensor("token_embd.weight", matrix(n_vocab, shape.n_embd))
    writer.add_tensor("output_norm.weight", ones)
    if not tie_output:
        writer.add_tensor("output.weight", matrix(n_vocab, shape.n_embd))
    if output_bias is not None:
        writer.add_tensor("output.bias", output_bias.astype(np.float32))
    q_dim, kv_dim = shape.n_head * head_dim, shape.n_kv_head * head_dim
    for i in range(shape.n_layer):
        block = f"blk.{i}."
        writer.add_tensor(block + "attn_norm.weight", ones)
        writer.add_tensor(block + "attn_q.weight", matrix(q_dim, shape.n_embd))
        writer.add_tensor(block + "attn_k.weight", matrix(kv_dim, shape.n_embd))
        writer.add_tensor(block + "attn_v.weight", matrix(kv_dim, shape.n_embd))
        if qkv_bias:
            writer.add_tensor(block + "attn_q.bias", vector(q_dim))
            writer.add_tensor(block + "attn_k.bias", vector(kv_dim))
            writer.add_tensor(block + "attn_v.bias", vector(kv_dim))
        writer.add_tensor(block + "attn_output.weight", matrix(shape.n_embd, q_dim))
        writer.add_tensor(block + "ffn_norm.weight", ones)
        writer.add_tensor(block + "ffn_gate.weight", matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(block + "ffn_up.weight", matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(block + "ffn_down.weight", matrix(shape.n_embd, shape.n_ff))


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def qwen_vocabulary(
    n_vocab: int | None = None, merge_pairs: Sequence[tuple[str, str]] = QWEN_MERGES
) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges of the qwen-like vocabulary.

    `n_vocab` pads the vocabulary with `<|extra_N|>` control tokens up to that
    size (a real Qwen vocabulary has 151,936 rows).
    """
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    for left, right in merge_pairs:
        left_u = "".join(b2u[b] for b in left.encode())
        right_u = "".join(b2u[b] for b in right.encode())
        merges.append(f"{left_u} {right_u}")
        tokens.append(left_u + right_u)
    types = [TOKEN_NORMAL] * len(tokens)
    tokens += QWEN_CONTROL_TOKENS
    types += [TOKEN_CONTROL] * len(QWEN_CONTROL_TOKENS)
    if n_vocab is not None:
        if n_vocab < len(tokens):
            raise ValueError(f"n_vocab {n_vocab} is below the {len(tokens)} tokens the qwen-like vocabulary needs")
        pad = n_vocab - len(tokens)
        tokens += [f"<|extra_{i}|>" for i in range(pad)]
        types += [TOKEN_CONTROL] * pad
    return tokens, types, merges


def write_qwen_like(
    path: str | Path,
    *,
    shape: Shape = PRESETS["tiny"],
    n_vocab: int | None = None,
    seed: int = 0,
    dtype: str = "f32",
    weight_scale: float = 0.02,
    output_bias: Mapping[str, float] | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
    tie_output: bool = False,
    merge_pairs: Sequence[tuple[str, str]] = QWEN_MERGES,
) -> Path:
    """A qwen2 model with a byte-level BPE vocabulary; `output_bias` maps token
    texts (control tokens as they are, others as plain strings, e.g. "\\n\\n")
    to logit offsets."""
    tokens, types, merges = qwen_vocabulary(n_vocab, merge_pairs)
    b2u = bytes_to_unicode()
    bias = None
    if output_bias:
        bias = np.zeros(len(tokens), np.float32)
        for text, offset in output_bias.items():
            token = text if text in tokens else "".join(b2u[b] for b in text.encode())
            bias[tokens.index(token)] = offset
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    end_of_text = tokens.index("<|endoftext|>")
    writer.add_bos_token_id(end_of_text)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(end_of_text)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    _add_weights(
        writer,
        len(tokens),
        shape,
        seed=seed,
        dtype=dtype,
        weight_scale=weight_scale,
        qkv_bias=True,
        output_bias=bias,
        tie_output=tie_output,
    )
    _finish(writer)
    return Path(path)


def write_llama_like(
    path: str | Path,
    *,
    shape: Shape = PRESETS["tiny"],
    seed: int = 0,
    dtype: str = "f32",
    weight_scale: float = 0.02,
    chat_template: str | None = LLAMA2_TEMPLATE,
) -> Path:
    """A llama model with a SentencePiece vocabulary (byte fallback, BOS added)."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(TOKEN_BYTE)
    for i, piece in enumerate(LLAMA_PIECES):
        tokens.append(piece)
        scores.append(-float(i))
        types.append(TOKEN_NORMAL)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    _add_weights(
        writer,
        len(tokens),
        shape,
        seed=seed,
        dtype=dtype,
        weight_scale=weight_scale,
        qkv_bias=False,
        output_bias=None,
        tie_output=False,
    )
    _finish(writer)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=("qwen", "llama"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--n-embd", type=int, help="override the preset's embedding width")
    parser.add_argument("--n-layer", type=int, help="override the preset's layer count")
    parser.add_argument("--context", type=int, help="override the preset's training context length")
    parser.add_argument("--n-vocab", type=int, help="qwen: pad the vocabulary to this many tokens")
    parser.add_argument("--dtype", choices=("f32", "f16"), default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-scale", type=float, default=0.02)
    args = parser.parse_args(argv)
    shape = PRESETS[args.preset]
    given = (("n_embd", args.n_embd), ("n_layer", args.n_layer), ("context_length", args.context))
    overrides = {k: v for k, v in given if v is not None}
    shape = Shape(**{**vars(shape), **overrides})
    if args.family == "qwen":
        n_vocab = args.n_vocab if args.n_vocab is not None else (151936 if args.preset == "qwen-0.5b" else None)
        write_qwen_like(
            args.path,
            shape=shape,
            n_vocab=n_vocab,
            seed=args.seed,
            dtype=args.dtype,
            weight_scale=args.weight_scale,
            tie_output=args.preset == "qwen-0.5b",
        )
    else:
        write_llama_like(args.path, shape=shape, seed=args.seed, dtype=args.dtype, weight_scale=args.weight_scale)
    print(f"wrote {args.path} ({args.path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
