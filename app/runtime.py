"""Turn a resolved preset into running engines: load each GGUF once, share it
between roles that name the same model (a judge on the target), check that
draft and target share a vocabulary, and free everything on exit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from app.config import Role
from app.errors import UserError
from app.hub import file_problem
from app.presets import ModelInstance, ResolvedPreset
from app.search.settings import SearchSettings
from app.search.types import Engines

if TYPE_CHECKING:
    from engines.llama import LlamaModel


def sequence_capacity(settings: SearchSettings) -> int:
    """Sequence ids a model needs: every kept prefix, its candidates, the
    scored copies and the judge's forks, with room to spare."""
    live = settings.beam_width * settings.n
    return min(256, max(32, 4 * live + 8))


def default_threads() -> int | None:
    env = os.environ.get("SPECS_LOCAL_THREADS")
    return int(env) if env else None


def check_still_sound(instance: ModelInstance, preset: str) -> None:
    """Refuse a file that was deleted or replaced by something unfit after the preset
    found it (between `models` and `solve`, say): one sentence, before llama.cpp reads it.
    Cheap: the magic and the header, not the sha256."""
    entry, path = instance.entry, instance.path
    assert path is not None
    fix = f"run `specs-local download {preset}` to fetch it again" if entry.repo else f"put {entry.file} back there"
    if not path.is_file():
        raise UserError(f"{path}, the file of {entry.name}, is no longer there; {fix}.")
    problem = file_problem(path, None, name=entry.file, echo=lambda _: None)
    if problem is not None:
        raise UserError(f"{path}, the file of {entry.name}, {problem.text}; {fix}.")


@contextmanager
def open_engines(
    preset: ResolvedPreset,
    settings: SearchSettings,
    *,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
) -> Iterator[Engines]:
    """The preset's engines; every file of it must be here (app.commands.common.open_preset
    downloads missing ones first)."""
    from engines.llama import LlamaModel, check_shared_vocab
    from engines.reward import build_reward

    threads = threads if threads is not None else default_threads()
    n_seq_max = sequence_capacity(settings)

    def load(instance: ModelInstance) -> LlamaModel:
        if instance.path is None:
            raise UserError(
                f"The file of {instance.entry.name} is not on this machine; run `specs-local download {preset.name}`."
            )
        check_still_sound(instance, preset.name)
        return LlamaModel(
            instance.path,
            name=instance.entry.name,
            n_ctx=instance.entry.context,
            n_seq_max=n_seq_max,
            n_gpu_layers=n_gpu_layers,
            n_threads=threads,
        )

    with ExitStack() as stack:
        models: dict[Role, LlamaModel] = {}
        for instance in preset.instances():
            model = stack.enter_context(load(instance))
            models.update(dict.fromkeys(instance.roles, model))
            if "draft" in instance.roles:  # the target is loaded first: refuse a mismatch before the reward model
                check_shared_vocab(model, models["target"])
        reward = build_reward(preset.preset.reward.kind, models["reward"])
        yield Engines(target=models["target"], reward=reward, draft=models.get("draft"))
