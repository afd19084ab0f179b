"""Random-weight GGUFs with the shapes of the SPECS paper's models, quantised to Q4_K_M.

    python scripts/paper_gguf.py qwen2.5-math-7b /tmp/qwen-7b-q4km.gguf --threads 16

The shapes are those of Qwen2.5-Math-1.5B-Instruct (the paper's draft),
Qwen2.5-Math-7B-Instruct (its target; its PRM, Skywork-o1-Open-PRM-Qwen-2.5-7B,
is a 7B of the same shape) and Llama-3.1-8B. The weights are random, so the
files serve speed measurements only. Two things make them behave like trained
models where speed depends on it:

- the vocabulary has the real size (a qwen-like byte-level BPE from
  scripts/tiny_gguf.py, padded with control tokens), so every logits row is as
  wide as the real one;
- the output weights are scaled so that next-token distributions are as
  peaked as a trained model's: `--entropy` nats on average at T = 1 (default:
  0.48, the mean measured with the 0.5B development model,
  Qwen2.5-Coder-0.5B-Instruct Q4_K_M, over 120 tokens it sampled at T = 1 for
  three GSM8K questions). Candidates then share histories as often as they
  would with a trained model, instead of all diverging on a flat distribution.

The f16 file is written tensor by tensor (random numbers drawn on `--threads`
threads), quantised with llama.cpp's `llama_model_quantize`, and deleted.
`--f16-only` stops before quantising (which needs llama-cpp-python), so the
f16 file can be written while llama-cpp-python is being built; a later call
without it quantises that file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_gguf import CHATML_TEMPLATE, add_shape, qwen_vocabulary

LAYER_STD = 0.02
ENTROPY_NATS = 0.48


@dataclass(frozen=True)
class PaperShape:
    architecture: str
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_ff: int
    n_vocab: int
    context_length: int
    rope_base: float
    tie_output: bool
    qkv_bias: bool


SHAPES = {
    # Untied, unlike the real 1.5B: a tied random embedding makes every token its
    # own most likely successor. The output product costs the same either way.
    "qwen2.5-math-1.5b": PaperShape("qwen2", 1536, 28, 12, 2, 8960, 151936, 4096, 10000.0, False, True),
    "qwen2.5-math-7b": PaperShape("qwen2", 3584, 28, 28, 4, 18944, 152064, 4096, 10000.0, False, True),
    "llama-3.1-8b": PaperShape("llama", 4096, 32, 32, 8, 14336, 128256, 131072, 500000.0, False, False),
}


def logit_scale(n_vocab: int, entropy: float, seed: int = 0) -> float:
    """The standard deviation of Gaussian logits over `n_vocab` tokens whose
    softmax has `entropy` nats (bisection on one fixed draw)."""
    z = np.random.default_rng(seed).standard_normal(n_vocab)

    def entropy_at(sigma: float) -> float:
        x = sigma * z
        x -= x.max()
        p = np.exp(x)
        p /= p.sum()
        nz = p[p > 0]
        return float(-(nz * np.log(nz)).sum())

    low, high = 0.0, 100.0
    for _ in range(60):
        mid = (low + high) / 2
        if entropy_at(mid) > entropy:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def tensors(shape: PaperShape, output_std: float) -> Iterator[tuple[str, tuple[int, ...], float | None]]:
    """(name, numpy shape, standard deviation; None for norm weights of ones)."""
    head_dim = shape.n_embd // shape.n_head
    q_dim, kv_dim = shape.n_head * head_dim, shape.n_kv_head * head_dim
    # A tied model reads its output weights from the token embedding.
    yield "token_embd.weight", (shape.n_vocab, shape.n_embd), output_std if shape.tie_output else LAYER_STD
    yield "output_norm.weight", (shape.n_embd,), None
    if not shape.tie_output:
        yield "output.weight", (shape.n_vocab, shape.n_embd), output_std
    for i in range(shape.n_layer):
        block = f"blk.{i}."
        yield block + "attn_norm.weight", (shape.n_embd,), None
        yield block + "attn_q.weight", (q_dim, shape.n_embd), LAYER_STD
        yield block + "attn_k.weight", (kv_dim, shape.n_embd), LAYER_STD
        yield block + "attn_v.weight", (kv_dim, shape.n_embd), LAYER_STD
        if shape.qkv_bias:
            yield block + "attn_q.bias", (q_dim,), LAYER_STD
            yield block + "attn_k.bias", (kv_dim,), LAYER_STD
            yield block + "attn_v.bias", (kv_dim,), LAYER_STD
        yield block + "attn_output.weight", (shape.n_embd, q_dim), LAYER_STD
        yield block + "ffn_norm.weight", (shape.n_embd,), None
        yield block + "ffn_gate.weight", (shape.n_ff, shape.n_embd), LAYER_STD
        yield block + "ffn_up.weight", (shape.n_ff, shape.n_embd), LAYER_STD
        yield block + "ffn_down.weight", (shape.n_embd, shape.n_ff), LAYER_STD


def _random(dims: tuple[int, ...], std: float, seeds: np.random.SeedSequence, pool: ThreadPoolExecutor) -> np.ndarray:
    """f16 normal values, drawn in chunks on the pool's threads (numpy releases the GIL)."""
    out = np.empty(int(np.prod(dims)), np.float16)
    chunk = 1 << 22
    starts = range(0, len(out), chunk)

    def fill(start: int, seed: np.random.SeedSequence) -> None:
        values = np.random.default_rng(seed).standard_normal(min(chunk, len(out) - start), dtype=np.float32)
        values *= std
        out[start : start + len(values)] = values

    list(pool.map(fill, starts, seeds.spawn(len(starts))))
    return out.reshape(dims)


def write_f16(path: Path, shape: PaperShape, *, entropy: float, threads: int, seed: int = 0) -> None:
    tokens, types, merges = qwen_vocabulary(shape.n_vocab)
    writer = gguf.GGUFWriter(str(path), shape.architecture)
    add_shape(writer, shape, rope_base=shape.rope_base, file_type=gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    # Final RMSNorm leaves hidden states of norm sqrt(n_embd), so logits have
    # the standard deviation output_std * sqrt(n_embd).
    output_std = logit_scale(shape.n_vocab, entropy) / np.sqrt(shape.n_embd)
    plan = list(tensors(shape, output_std))
    for name, dims, std in plan:
        dtype = np.float32 if std is None or len(dims) == 1 else np.float16
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    seeds = np.random.SeedSequence(seed).spawn(len(plan))
    with ThreadPoolExecutor(threads) as pool:
        for (_, dims, std), tensor_seed in zip(plan, seeds):
            if std is None:
                data = np.ones(dims, np.float32)
            elif len(dims) == 1:  # biases stay f32, as llama.cpp expects
                data = np.random.default_rng(tensor_seed).standard_normal(dims, dtype=np.float32) * np.float32(std)
            else:
                data = _random(dims, std, tensor_seed, pool)
            writer.write_tensor_data(data)
    writer.close()


def quantize(source: Path, target: Path, threads: int) -> None:
    import llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.ftype = L.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    rc = L.llama_model_quantize(os.fsencode(source), os.fsencode(target), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed on {source} (code {rc})")


def f16_path(target: Path) -> Path:
    return target.with_name(target.stem + "-f16.gguf")


def write(shape: PaperShape, target: Path, *, entropy: float, threads: int, f16_only: bool = False) -> None:
    """The f16 file beside `target` (kept from an earlier --f16-only call if there),
    then `target` quantised from it, then the f16 file deleted."""
    f16 = f16_path(target)
    t0 = time.perf_counter()
    if not f16.exists():
        write_f16(f16.with_suffix(".part"), shape, entropy=entropy, threads=threads)
        f16.with_suffix(".part").rename(f16)
        print(f"wrote {f16} in {time.perf_counter() - t0:.0f} s", flush=True)
    if f16_only:
        return
    t1 = time.perf_counter()
    quantize(f16, target, threads)
    f16.unlink()
    print(f"wrote {target} ({target.stat().st_size / 2**30:.2f} GiB), quantised in {time.perf_counter() - t1:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("path", type=Path, help="the Q4_K_M GGUF to write (the f16 one goes beside it)")
    parser.add_argument("--entropy", type=float, default=ENTROPY_NATS, help="mean next-token entropy at T=1, nats")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--f16-only", action="store_true", help="write the f16 file only (quantise in a later call)")
    args = parser.parse_args(argv)
    write(SHAPES[args.shape], args.path, entropy=args.entropy, threads=args.threads, f16_only=args.f16_only)


if __name__ == "__main__":
    main()
