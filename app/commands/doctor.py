"""`specs-local doctor`: the llama.cpp build, the hardware, whether each preset
fits, and whether the servers of served models can run their roles."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from app.config import Catalog, load_catalog
from app.hub import format_size
from app.presets import ModelInstance, ResolvedPreset, resolve_preset
from app.runtime import sequence_capacity
from engines import system
from engines.base import EngineError, ModelLoadError
from engines.gguf_info import attention_shape, read_header

# Without the file, the KV cache is estimated from the weights: 32 KiB of f16
# cache per token per GB of Q4 weights is above every model of the catalog
# (Llama-3.1-8B: 26.6 KiB, Qwen2.5-1.5B: 29, Qwen2.5-7B: 12), so an estimate
# errs towards "does not fit".
_KV_PER_TOKEN_PER_GB = 32 * 1024
_ASSUMED_VOCAB = 152_064  # Qwen2.5's, the largest vocabulary in the catalog
# engines/llama.py sizes its logits buffer for max(n_seq_max, min(n_batch, 64)) rows.
_MIN_OUTPUT_ROWS = 64
_TIGHT = 0.9  # above this share of the available memory a preset is "tight"


@dataclass(frozen=True)
class ModelNeed:
    """One model instance as app.runtime loads it: weights, KV cache and logits buffer."""

    model: str
    roles: tuple[str, ...]
    weights: int
    kv_cache: int
    logits: int
    context: int
    measured: bool  # sized from the file's GGUF header, not estimated


@dataclass(frozen=True)
class Budget:
    """The memory a preset has to fit in."""

    bytes: int
    label: str  # e.g. "free memory of NVIDIA H200" or "free RAM"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(as_json: bool) -> None:
    """Check the llama.cpp build, the hardware, the memory each preset needs, and
    each model server (answers, serves the name, teacher-forces, draft and target
    share a vocabulary)."""
    catalog = load_catalog()
    report = examine(catalog)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)


def examine(catalog: Catalog) -> dict[str, Any]:
    """Everything doctor reports, as plain data."""
    try:
        build: system.LlamaBuild | None = system.llama_build()
        build_error = None
    except system.LlamaUnavailable as exc:
        build, build_error = None, str(exc)
    memory = system.host_memory()
    gpus = system.nvidia_gpus()
    budget = _budget(build, memory, gpus)
    presets = {}
    for name in catalog.presets:
        needs = preset_needs(resolve_preset(catalog, name))
        total = sum(n.weights + n.kv_cache + n.logits for n in needs)
        presets[name] = {
            "total": total,
            "weights": sum(n.weights for n in needs),
            "kv_cache": sum(n.kv_cache for n in needs),
            "logits": sum(n.logits for n in needs),
            "estimated": not all(n.measured for n in needs),
            "fits": _verdict(total, budget),
            "models": [asdict(n) for n in needs],
        }
    return {
        "llama_cpp": {"available": build is not None, "error": build_error, **(_build_info(build) if build else {})},
        "hardware": {
            "threads": system.llama_threads(),
            "usable_cpus": system.usable_cpus(),
            "ram_total": memory.total,
            "ram_available": memory.available,
            "nvidia_gpus": [asdict(g) for g in gpus],
        },
        "budget": asdict(budget),
        "presets": presets,
        "servers": examine_servers(catalog),
        "advice": _advice(build, build_error),
    }


def examine_servers(catalog: Catalog) -> dict[str, Any]:
    """Each server of each served model a preset uses, checked once; then the
    vocabularies of each preset whose draft and target are both served."""
    from engines.remote.checks import DOCTOR_POLICY, check_server, check_shared_vocab
    from engines.remote.client import ServerPool
    from engines.remote.model import RemoteModel

    used: dict[str, set[str]] = {}
    for preset in catalog.presets.values():
        for role, model in preset.roles().items():
            if catalog.model(model).remote:
                used.setdefault(model, set()).add(role)
    checks = []
    for name, roles in used.items():
        entry = catalog.model(name)
        key = os.environ.get(entry.api_key_env) or None
        for url in entry.urls:
            found = check_server(url, entry.served_name, api_key=key, teacher_forcing=bool(roles & {"draft", "target"}))
            checks.append({"model": name, **asdict(found)})
    healthy = {c["model"] for c in checks} - {c["model"] for c in checks if c["problem"]}
    pairs: dict[str, str | None] = {}
    for preset in catalog.presets.values():
        if not preset.draft or preset.draft not in healthy or preset.target not in healthy:
            continue
        opened: list[RemoteModel] = []
        try:
            for name in (preset.draft, preset.target):
                entry = catalog.model(name)
                pool = ServerPool(entry.urls, api_key=os.environ.get(entry.api_key_env) or None, policy=DOCTOR_POLICY)
                opened.append(RemoteModel(pool, entry.served_name, name=name))
            check_shared_vocab(opened[0], opened[1])
            pairs[preset.name] = None
        except EngineError as exc:
            pairs[preset.name] = str(exc)
        finally:
            for served in opened:
                served.close()
    return {"checks": checks, "vocabularies": pairs}


def preset_needs(preset: ResolvedPreset) -> list[ModelNeed]:
    """The model instances app.runtime.open_engines creates for a preset, sized."""
    rows = sequence_capacity(preset.preset.settings())
    return [_model_need(instance, rows) for instance in preset.instances() if not instance.entry.remote]


def _model_need(instance: ModelInstance, n_seq_max: int) -> ModelNeed:
    entry, path, roles = instance.entry, instance.path, instance.roles
    output_rows = max(n_seq_max, _MIN_OUTPUT_ROWS)
    if path is not None:
        try:
            header = read_header(path)
            shape = attention_shape(header)
        except ModelLoadError:  # a damaged file is sized like a missing one; `download` replaces it
            pass
        else:
            context = min(entry.context, shape.context_length or entry.context)  # as the engine caps it
            vocab = header.array_lengths.get("tokenizer.ggml.tokens", _ASSUMED_VOCAB)
            return ModelNeed(
                model=entry.name,
                roles=roles,
                weights=path.stat().st_size,
                kv_cache=shape.kv_bytes_per_token() * context,
                logits=vocab * output_rows * 4,
                context=context,
                measured=True,
            )
    weights = entry.size or 0
    return ModelNeed(
        model=entry.name,
        roles=roles,
        weights=weights,
        kv_cache=int(weights / 1e9 * _KV_PER_TOKEN_PER_GB) * entry.context,
        logits=_ASSUMED_VOCAB * output_rows * 4,
        context=entry.context,
        measured=False,
    )


def _budget(build: system.LlamaBuild | None, memory: system.HostMemory, gpus: list[system.NvidiaGpu]) -> Budget:
    ram = memory.available if memory.available is not None else memory.total
    ram_label = "free RAM" if memory.available is not None else "RAM (total; free is not known here)"
    if build is None or not build.gpu_offload:
        return Budget(ram, ram_label)
    # The engine offloads every layer and the KV cache when the build can.
    dedicated = [d for d in build.devices if d.kind == "GPU"]
    if dedicated:
        best = max(dedicated, key=lambda d: d.free)
        return Budget(best.free, f"free memory of {best.description}")
    if gpus:
        best_gpu = max(gpus, key=lambda g: g.free)
        return Budget(best_gpu.free, f"free memory of {best_gpu.name}")
    return Budget(ram, f"{ram_label} (shared with the integrated GPU)")


def _verdict(total: int, budget: Budget) -> str:
    if total > budget.bytes:
        return "no"
    return "tight" if total > _TIGHT * budget.bytes else "yes"


def _build_info(build: system.LlamaBuild) -> dict[str, Any]:
    return {
        "version": build.version,
        "backends": list(build.backends),
        "gpu_backends": list(build.gpu_backends),
        "gpu_offload": build.gpu_offload,
        "devices": [asdict(d) for d in build.devices],
        "system_info": build.system_info,
    }


def _advice(build: system.LlamaBuild | None, build_error: str | None) -> list[str]:
    backend = system.suggested_gpu_backend()
    gpu = "an NVIDIA GPU" if backend == "CUDA" else "an Apple GPU"
    if build is None:
        lines = [build_error or "llama-cpp-python is not installed."]
        if backend:
            lines.append(f"This machine has {gpu}; install it with {backend}:\n  {system.rebuild_command(backend)}")
        return lines
    if build.gpu_backends:
        return []
    if backend:
        return [
            f"This llama.cpp build runs on the CPU only, but this machine has {gpu}; rebuild it with {backend}:\n"
            f"  {system.rebuild_command(backend)}"
        ]
    return [
        "This llama.cpp build runs on the CPU only and no GPU was found. With an NVIDIA GPU, rebuild it with CUDA:\n"
        f"  {system.rebuild_command('CUDA')}\nor on Apple silicon with Metal:\n  {system.rebuild_command('Metal')}"
    ]


def _print(report: dict[str, Any]) -> None:
    size = format_size
    llama = report["llama_cpp"]
    click.echo("llama.cpp")
    if llama["available"]:
        click.echo(f"  llama-cpp-python {llama['version']}, backends: {', '.join(llama['backends']) or 'none'}")
        click.echo(f"  GPU offload: {'yes' if llama['gpu_offload'] else 'no'}")
        for device in llama["devices"]:
            memory = f"{size(device['free'])} free of {size(device['total'])}"
            click.echo(f"  device {device['name']}: {device['description']} ({device['kind']}, {memory})")
        click.echo(f"  {llama['system_info']}")
    else:
        click.echo(f"  not available: {llama['error']}")
    hw = report["hardware"]
    click.echo("hardware")
    click.echo(f"  threads: {hw['threads']} (of {hw['usable_cpus']} usable CPUs)")
    free_ram = size(hw["ram_available"]) if hw["ram_available"] is not None else "?"
    click.echo(f"  RAM: {free_ram} free of {size(hw['ram_total'])}")
    for gpu in hw["nvidia_gpus"]:
        click.echo(f"  GPU: {gpu['name']}, {size(gpu['free'])} free of {size(gpu['total'])} (nvidia-smi)")
    if not hw["nvidia_gpus"]:
        click.echo("  GPU: none found by nvidia-smi")

    budget = report["budget"]
    click.echo(f"presets, against {size(budget['bytes'])} {budget['label']} (~: estimated, a file is not downloaded)")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("preset", "weights", "KV cache", "logits", "total", "fits"):
        table.add_column(column, justify="left" if column in ("preset", "fits") else "right", no_wrap=True)
    for name, need in report["presets"].items():
        mark = "~" if need["estimated"] else ""
        fits = {"yes": "[green]yes[/]", "tight": "[yellow]tight[/]", "no": "[red]no[/]"}[need["fits"]]
        table.add_row(name, *(mark + size(need[k]) for k in ("weights", "kv_cache", "logits", "total")), fits)
    Console(soft_wrap=False).print(table)
    _print_servers(report["servers"])
    for line in report["advice"]:
        click.echo(line)


def _print_servers(servers: dict[str, Any]) -> None:
    if not servers["checks"]:
        return
    click.echo("servers (served models need no memory here)")
    for check in servers["checks"]:
        where = f"  {check['model']}: {check['served']} at {check['url']}"
        if check["problem"]:
            click.echo(where + ": " + click.style(check["problem"], fg="red"))
        else:
            click.echo(where + ": " + click.style(f"ok, {check['max_model_len']}-token context", fg="green"))
    for preset, problem in servers["vocabularies"].items():
        verdict = click.style(problem, fg="red") if problem else click.style("draft and target share it", fg="green")
        click.echo(f"  {preset} vocabulary: {verdict}")
