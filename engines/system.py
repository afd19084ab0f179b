"""The llama.cpp build and the machine it runs on, for `specs-local doctor`.

llama_cpp is imported lazily, inside `llama_build`, so that the rest (RAM,
threads, NVIDIA GPUs) can be reported on a machine where it is missing or
broken.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from engines.base import EngineError

LLAMA_CPP_PYTHON_PIN = "0.3.36"
_REBUILD = 'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir llama-cpp-python=={version}'
# ggml's backend registry names (ggml/include/ggml-*.h), Metal's "MTL" shown as "Metal".
GPU_BACKENDS = ("CUDA", "ROCm", "MUSA", "Metal", "Vulkan", "SYCL", "OpenCL", "CANN")
_BACKEND_NAMES = {"MTL": "Metal"}
# ggml's enum ggml_backend_dev_type (ggml-backend.h)
_DEVICE_KINDS = ("CPU", "GPU", "IGPU", "ACCEL", "META")


class LlamaUnavailable(EngineError):
    """llama_cpp cannot be imported; the message says why and how to install it."""


@dataclass(frozen=True)
class Device:
    name: str  # ggml's device name, e.g. CUDA0
    description: str  # e.g. NVIDIA GeForce RTX 4090
    kind: str  # CPU, GPU, IGPU, ACCEL
    free: int  # bytes
    total: int


@dataclass(frozen=True)
class LlamaBuild:
    version: str
    backends: tuple[str, ...]  # registered ggml backends, e.g. ("CUDA", "CPU") or ("Metal", "BLAS", "CPU")
    devices: tuple[Device, ...]
    gpu_offload: bool
    system_info: str

    @property
    def gpu_backends(self) -> tuple[str, ...]:
        return tuple(b for b in self.backends if b in GPU_BACKENDS)


@dataclass(frozen=True)
class NvidiaGpu:
    name: str
    total: int  # bytes
    free: int


@dataclass(frozen=True)
class HostMemory:
    total: int  # bytes
    available: int | None  # None where the OS does not say


def llama_build() -> LlamaBuild:
    try:
        import llama_cpp
        from llama_cpp._ggml import libggml
    except (ImportError, OSError) as exc:  # OSError: a shared library failed to load
        raise LlamaUnavailable(
            f"llama-cpp-python cannot be imported ({exc}); install it with"
            f" `pip install llama-cpp-python=={LLAMA_CPP_PYTHON_PIN}`."
        ) from None
    # Asking about offload first also loads dynamically built backends.
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    backends, devices = _ggml_registry(libggml)
    return LlamaBuild(
        version=_llama_cpp_python_version(),
        backends=backends,
        devices=devices,
        gpu_offload=gpu_offload,
        system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
    )


def _ggml_registry(lib: ctypes.CDLL) -> tuple[tuple[str, ...], tuple[Device, ...]]:
    """Backends and devices as ggml registered them (llama-cpp-python binds none of these)."""
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    lib.ggml_backend_dev_memory.restype = None

    backends = []
    for i in range(lib.ggml_backend_reg_count()):
        name = lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode()
        backends.append(_BACKEND_NAMES.get(name, name))
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        devices.append(
            Device(
                name=lib.ggml_backend_dev_name(dev).decode(),
                description=lib.ggml_backend_dev_description(dev).decode(),
                kind=_DEVICE_KINDS[kind] if 0 <= kind < len(_DEVICE_KINDS) else str(kind),
                free=free.value,
                total=total.value,
            )
        )
    return tuple(backends), tuple(devices)


def _llama_cpp_python_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        import llama_cpp

        return str(llama_cpp.__version__)


def rebuild_command(backend: str, version: str = LLAMA_CPP_PYTHON_PIN) -> str:
    """The pip command that rebuilds llama-cpp-python with a GPU backend."""
    flag = {"CUDA": "-DGGML_CUDA=on", "Metal": "-DGGML_METAL=on"}[backend]
    return _REBUILD.format(flag=flag, version=version)


def suggested_gpu_backend() -> str | None:
    """The backend this machine could use: Metal on Apple silicon, CUDA where an NVIDIA driver is."""
    if sys.platform == "darwin" and os.uname().machine == "arm64":
        return "Metal"
    if shutil.which("nvidia-smi"):
        return "CUDA"
    return None


def nvidia_gpus() -> list[NvidiaGpu]:
    """NVIDIA GPUs as nvidia-smi reports them; empty without the driver's tool."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(csv_text: str) -> list[NvidiaGpu]:
    """Rows of `name, total MiB, free MiB`; rows it cannot read (e.g. "[N/A]") are left out."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            continue
        name, total, free = parts
        try:
            gpus.append(NvidiaGpu(name=name, total=int(total) * 2**20, free=int(free) * 2**20))
        except ValueError:
            continue
    return gpus


def host_memory() -> HostMemory:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                fields[key] = int(value[0]) * 1024  # kB
        return HostMemory(total=fields.get("MemTotal", 0), available=fields.get("MemAvailable"))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return HostMemory(total=total, available=None)


def llama_threads() -> int:
    """The threads a model gets by default (SPECS_LOCAL_THREADS overrides, as in app.runtime)."""
    env = os.environ.get("SPECS_LOCAL_THREADS")
    if env and env.isdigit():
        return int(env)
    try:
        from engines._native import default_threads
    except (ImportError, OSError):
        return usable_cpus()
    return default_threads()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
