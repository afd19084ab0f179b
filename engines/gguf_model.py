"""One GGUF file opened in llama.cpp: its context, its lifetime, and its text.

`GGUFModel` turns options into a `NativeContext`, closes it once, and speaks the
model's text: token ids <-> text through the GGUF's vocabulary, conversations
through its own chat template. It keeps no sequences; `engines.llama.LlamaModel`
adds them. Token ids are checked against the vocabulary before llama.cpp sees
them (an out-of-range id aborts the process in `llama_token_to_piece`).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import llama_cpp as L

from engines import _native as N
from engines.base import EngineError, ModelUsage
from engines.prompts import render_chat, system_user

_Model = TypeVar("_Model", bound="GGUFModel")


class GGUFModel:
    """A GGUF file opened with one llama.cpp context, as text (no sequences)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        n_ctx: int | None = None,
        n_seq_max: int = 64,
        n_batch: int = 512,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        flash_attn: str | bool = "auto",
        hidden_layer: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.usage = ModelUsage()
        self._native = N.NativeContext(
            self.path,
            self.name,
            n_ctx=n_ctx,
            n_seq_max=n_seq_max,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            flash_attn=flash_attn,
            hidden_layer=hidden_layer,
        )
        self.n_ctx_train = self._native.n_ctx_train
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.n_threads = self._native.n_threads
        self.gpu_layers = self._native.gpu_layers
        self.n_vocab = self._native.n_vocab
        self.chat_template = self._native.chat_template
        self._lock = threading.RLock()
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._bos_text = self._special_text(L.llama_vocab_bos(self._native.vocab))
        self._eos_text = self._special_text(L.llama_vocab_eos(self._native.vocab))

    # --- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the weights; the model is unusable afterwards."""
        with self._lock:
            self._native.close()

    def __enter__(self: _Model) -> _Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self._native.n_ctx

    @property
    def vocab(self) -> L.llama_vocab_p:
        """llama.cpp's handle of the vocabulary (for `engines.vocab`); freed by `close`."""
        self._check_open()
        return self._native.vocab

    @property
    def kv_cache_bytes(self) -> int:
        """Size of the f16 KV cache of the whole context."""
        return self._native.kv_cache_bytes

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} n_ctx={self.n_ctx} n_vocab={self.n_vocab}>"

    def _check_open(self) -> None:
        if self._native.closed:
            raise EngineError(f"{self.name} was closed.")

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            self._check_open()
            yield

    # --- text -------------------------------------------------------------------

    def format_chat(self, system: str, user: str) -> str:
        return self.render_chat(system_user(system, user), add_generation_prompt=True)

    def render_chat(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """Any conversation through the GGUF's own chat template (ChatML without one)."""
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._bos_text,
            eos_token=self._eos_text,
            model_name=self.name,
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a continuation text: no BOS, special tokens parsed."""
        with self._open():
            return self._tokenize(text, add_special=False)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Token ids of a whole prompt: BOS when the vocabulary wants one (once,
        also when the chat template already wrote it), special tokens parsed."""
        written = bool(self._bos_text) and prompt.startswith(self._bos_text)
        with self._open():
            return self._tokenize(prompt, add_special=not written)

    def detokenize(self, tokens: Sequence[int]) -> str:
        with self._open():
            ids = self._checked_tokens(tokens)
            return b"".join(self._piece(t) for t in ids).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary's text of one token (special tokens included)."""
        self._check_open()
        (token,) = self._checked_tokens([token])
        return L.llama_vocab_get_text(self._native.vocab, token).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT, <|im_end|>, ...)."""
        known = self._eog.get(token)
        if known is None:
            self._check_open()
            (token,) = self._checked_tokens([token])
            known = self._eog[token] = bool(L.llama_vocab_is_eog(self._native.vocab, token))
        return known

    def _special_text(self, token: int) -> str:
        return self.token_text(token) if 0 <= token < self.n_vocab else ""

    def _tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self._native.vocab, data, len(data), buf, capacity, add_special, True)
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise EngineError(f"{self.name} could not tokenize a text of {len(data)} bytes.")

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = (ctypes.c_char * 64)()
            n = L.llama_token_to_piece(self._native.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = (ctypes.c_char * -n)()
                n = L.llama_token_to_piece(self._native.vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _checked_tokens(self, tokens: Sequence[int]) -> list[int]:
        ids = [int(t) for t in tokens]
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.name} (0..{self.n_vocab - 1})")
        return ids
