"""Turn a resolved preset into running engines: load each GGUF once (or connect
to the servers of a served model), share it between roles that name the same
model (a judge on the target), check that draft and target share a
vocabulary and that served models can be teacher-forced, and free everything
on exit. Every check runs here, before a search starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from app.config import Role
from app.errors import UserError
from app.presets import ModelInstance, ResolvedPreset
from app.search.settings import SearchSettings
from app.search.types import Engines

if TYPE_CHECKING:
    from engines.base import LanguageModel, RewardModel
    from engines.llama import LlamaModel
    from engines.remote.model import RemoteModel


def sequence_capacity(settings: SearchSettings) -> int:
    """Sequence ids a model needs: every kept prefix, its candidates, the
    scored copies and the judge's forks, with room to spare."""
    live = settings.beam_width * settings.n
    return min(256, max(32, 4 * live + 8))


def default_threads() -> int | None:
    env = os.environ.get("SPECS_LOCAL_THREADS")
    return int(env) if env else None


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
    from engines.llama import LlamaModel
    from engines.vocab import check_shared_vocab

    threads = threads if threads is not None else default_threads()
    n_seq_max = sequence_capacity(settings)

    def load(instance: ModelInstance) -> LlamaModel | RemoteModel:
        if instance.entry.remote:
            return connect(instance)
        if instance.path is None:
            raise UserError(
                f"The file of {instance.entry.name} is not on this machine; run `specs-local download {preset.name}`."
            )
        return LlamaModel(
            instance.path,
            name=instance.entry.name,
            n_ctx=instance.entry.context,
            n_seq_max=n_seq_max,
            n_gpu_layers=n_gpu_layers,
            n_threads=threads,
        )

    with ExitStack() as stack:
        models: dict[Role, LlamaModel | RemoteModel] = {}
        for instance in preset.instances():
            model = load(instance)
            stack.callback(model.close)
            models.update(dict.fromkeys(instance.roles, model))
            if "draft" in instance.roles:  # the target is loaded first: refuse a mismatch before the reward model
                target = models["target"]
                if isinstance(model, LlamaModel) and isinstance(target, LlamaModel):
                    check_shared_vocab(model, target)
                else:
                    from engines.remote.checks import check_shared_vocab as check_served_vocab

                    check_served_vocab(model, target)
        reward = build_reward(preset.preset.reward.kind, models["reward"])
        draft: LanguageModel | None = models.get("draft")
        yield Engines(target=models["target"], reward=reward, draft=draft)


def connect(instance: ModelInstance) -> RemoteModel:
    """A served model: its servers answer, serve its name and teacher-force
    (an error names the server and the fix). The API key comes from the
    environment variable the entry names."""
    from engines.remote.checks import check_teacher_forcing
    from engines.remote.client import ServerPool
    from engines.remote.model import RemoteModel

    entry = instance.entry
    pool = ServerPool(entry.urls, api_key=os.environ.get(entry.api_key_env) or None)
    try:
        # The server's max_model_len rules; an entry's own `context` can only lower it.
        context = entry.context if "context" in entry.model_fields_set else None
        model = RemoteModel(pool, entry.served_name, name=entry.name, n_ctx=context)
        if set(instance.roles) & {"draft", "target"}:
            check_teacher_forcing(model)
    except BaseException:
        pool.close()
        raise
    return model


def build_reward(kind: str, model: LlamaModel | RemoteModel) -> RewardModel:
    """The preset's reward kind on its loaded (or served) model."""
    from engines.remote.model import RemoteModel
    from engines.remote.reward import PooledPRM
    from engines.reward import build_reward as build_text_reward

    if kind == "pooled-prm":
        if not isinstance(model, RemoteModel):
            raise UserError(f"A pooled-prm reward reads a PRM served by vLLM; give {model.name} a server `url`.")
        return PooledPRM(model)
    return build_text_reward(kind, model)  # type: ignore[arg-type]  # the text rewards read either model
