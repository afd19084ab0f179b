"""What a GGUF file says about itself, read without loading the model.

`gguf.GGUFReader` parses every array element of the header into Python
objects, which takes seconds for a 150k-token vocabulary; this reader walks
the header once, keeps the scalar fields, and only notes the length of each
array (the vocabulary size among them). It is enough for the magic check, the
shape of the attention layers and the KV-cache bytes per token. It also reads
the tensor table, so that a file cut short (a download stopped, a disk that
filled up) is told apart from a whole one without loading it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, Keys

from engines.base import ModelLoadError

MAGIC = struct.pack("<I", GGUF_MAGIC)  # b"GGUF"

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Numeric arrays up to this length are kept (per-layer head counts); longer
# ones (token scores, token types) only have their length recorded.
_KEPT_ARRAY_LENGTH = 1024


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    n_tensors: int
    metadata: dict[str, Any]  # scalars, strings and short numeric arrays (as tuples)
    array_lengths: dict[str, int]  # every array field, e.g. tokenizer.ggml.tokens
    data_end: int  # the file size the tensor table asks for: where the last tensor's bytes end

    @property
    def architecture(self) -> str:
        return str(self.metadata.get(Keys.General.ARCHITECTURE, ""))

    def arch_field(self, key_template: str) -> Any:
        """A field keyed by architecture, e.g. `Keys.LLM.BLOCK_COUNT`."""
        return self.metadata.get(key_template.format(arch=self.architecture))

    @property
    def context_length(self) -> int | None:
        """The context the model was trained on."""
        value = self.arch_field(Keys.LLM.CONTEXT_LENGTH)
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class AttentionShape:
    n_layer: int
    n_head: int
    kv_heads_per_layer: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    context_length: int | None  # the training context

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """K and V of every layer for one token (f16 cache by default)."""
        per_head = self.head_dim_k + self.head_dim_v
        return sum(n * per_head for n in self.kv_heads_per_layer) * bytes_per_element


def has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def check_gguf(path: Path) -> None:
    """Raise ModelLoadError unless `path` is a file that starts like a GGUF."""
    try:
        ok = has_gguf_magic(path)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {path} ({exc.strerror}).") from None
    if not ok:
        raise ModelLoadError(f"{path} is not a GGUF file (wrong magic bytes); delete it and download it again.")


class _RunsPastTheEnd(ValueError):
    pass


class DamagedGGUF(ModelLoadError):
    """A GGUF file whose header does not parse, or whose tensors run past its end.
    `reason` completes a sentence that starts with the file's name."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}; delete it and download it again.")
        self.reason = reason


def read_header(path: Path) -> GGUFHeader:
    """The header of a GGUF file; ModelLoadError if it is not one, DamagedGGUF if its
    header is damaged or the file is shorter than its tensor table says."""
    check_gguf(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            size = len(buf)
            header = _HeaderParser(buf).parse()
    except (struct.error, _RunsPastTheEnd):  # struct.error: a field past the end
        raise DamagedGGUF(path, f"is cut short inside its header ({size:,} bytes)") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:  # Overflow: a length past 2**63
        raise DamagedGGUF(path, f"has a damaged GGUF header ({exc})") from None
    if size < header.data_end:
        raise DamagedGGUF(path, f"is cut short ({size:,} of the {header.data_end:,} bytes its header describes)")
    return header


def attention_shape(header: GGUFHeader) -> AttentionShape:
    """Layer count, KV heads and head sizes as llama.cpp derives them."""
    n_layer = header.arch_field(Keys.LLM.BLOCK_COUNT)
    n_head = header.arch_field(Keys.Attention.HEAD_COUNT)
    n_embd = header.arch_field(Keys.LLM.EMBEDDING_LENGTH)
    if not all(isinstance(v, int) for v in (n_layer, n_head, n_embd)) or not n_head:
        raise ModelLoadError(
            f"The GGUF header of a {header.architecture or 'unknown'} model lacks the layer, head or"
            " embedding counts; it cannot be sized."
        )
    kv = header.arch_field(Keys.Attention.HEAD_COUNT_KV)
    if isinstance(kv, tuple):
        kv_heads = tuple(int(n) for n in kv)
    else:
        kv_heads = (int(kv) if isinstance(kv, int) else n_head,) * n_layer
    # llama.cpp's defaults when the key/value lengths are absent: n_embd / n_head.
    head_dim_k = header.arch_field(Keys.Attention.KEY_LENGTH) or n_embd // n_head
    head_dim_v = header.arch_field(Keys.Attention.VALUE_LENGTH) or n_embd // n_head
    return AttentionShape(
        n_layer=n_layer,
        n_head=n_head,
        kv_heads_per_layer=kv_heads,
        head_dim_k=int(head_dim_k),
        head_dim_v=int(head_dim_v),
        context_length=header.context_length,
    )


class _HeaderParser:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 4  # after the magic
        self.endian = "<"

    def parse(self) -> GGUFHeader:
        (version,) = struct.unpack_from("<I", self.buf, self.pos)
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.endian = ">"
            (version,) = struct.unpack_from(">I", self.buf, self.pos)
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old for llama.cpp")
        self.pos += 4
        n_tensors = self._unpack("Q")
        n_kv = self._unpack("Q")
        metadata: dict[str, Any] = {}
        array_lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = self._string()
            value_type = GGUFValueType(self._unpack("I"))
            if value_type == GGUFValueType.ARRAY:
                item_type = GGUFValueType(self._unpack("I"))
                length = self._unpack("Q")
                array_lengths[key] = length
                kept = self._array(item_type, length)
                if kept is not None:
                    metadata[key] = kept
            else:
                metadata[key] = self._value(value_type)
        data_end = self._tensor_data_end(n_tensors, metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
        return GGUFHeader(version, n_tensors, metadata, array_lengths, data_end)

    def _tensor_data_end(self, n_tensors: int, alignment: Any) -> int:
        """Where the last tensor's bytes end: the tensor table (name, shape, type and
        offset of each) is followed by padding to `alignment`, then the tensor data."""
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        end = 0
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            elements = 1
            for _ in range(n_dims):
                elements *= self._unpack("Q")
            type_id = self._unpack("I")
            offset = self._unpack("Q")
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                continue  # a type newer than this gguf package: llama.cpp judges that tensor
            if elements % block:
                raise ValueError(f"tensor {name!r} is not a whole number of blocks")
            end = max(end, offset + elements // block * block_bytes)
        if not n_tensors:  # a vocabulary-only file ends with its metadata, unpadded
            return self.pos
        data_start = -(-self.pos // alignment) * alignment
        return data_start + end

    def _unpack(self, fmt: str) -> Any:
        full = self.endian + fmt
        (value,) = struct.unpack_from(full, self.buf, self.pos)
        self.pos += struct.calcsize(full)
        return value

    def _string(self) -> str:
        length = self._unpack("Q")
        end = self.pos + length
        if end > len(self.buf):
            raise _RunsPastTheEnd("a string runs past the end of the file")
        text = self.buf[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def _value(self, value_type: GGUFValueType) -> Any:
        if value_type == GGUFValueType.STRING:
            return self._string()
        return self._unpack(_SCALAR_FORMATS[value_type])

    def _array(self, item_type: GGUFValueType, length: int) -> tuple[Any, ...] | None:
        if item_type == GGUFValueType.STRING:
            for _ in range(length):
                skip = self._unpack("Q")
                self.pos += skip
            return None
        if item_type == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not part of any llama.cpp model header")
        fmt = self.endian + _SCALAR_FORMATS[item_type]
        size = struct.calcsize(fmt) * length
        if length > _KEPT_ARRAY_LENGTH:
            self.pos += size
            return None
        values = struct.unpack_from(self.endian + str(length) + _SCALAR_FORMATS[item_type], self.buf, self.pos)
        self.pos += size
        return values
