"""A disk that fills up: files opened for writing through a patched `open` share a
byte budget, take the last bytes that fit (a short write, as the kernel does)
and then fail with ENOSPC, while files opened for reading work as usual."""

from __future__ import annotations

import builtins
import errno
import io
import os
from typing import Any


class FullDisk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = 0  # writes that failed

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (an open, handed on)
        if not any(c in mode for c in "wax+"):
            return handle
        raw = handle.buffer.raw if isinstance(handle, io.TextIOWrapper) else getattr(handle, "raw", handle)
        raw.write = self._writer(raw.write)  # FileIO allows setting instance attributes
        return handle

    def _writer(self, write: Any) -> Any:
        def limited(data: Any) -> int:
            data = memoryview(data).cast("B")
            if self.free <= 0:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            taken = write(data[: self.free])
            self.free -= taken
            return taken

        return limited
