"""Turn a preset into running engines: load each GGUF once, share it between
roles that name the same model (a judge on the target), check that draft and
target share a vocabulary, and free everything on exit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from app.config import Catalog, Preset
from app.search.settings import SearchSettings
from app.search.types import Engines


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
    preset: Preset,
    catalog: Catalog,
    settings: SearchSettings,
    *,
    paths: dict[str, Path],
    threads: int | None = None,
    n_gpu_layers: int | None = None,
) -> Iterator[Engines]:
    """`paths` maps each role of the preset ("draft", "target", "reward") to
    its local file (see `app.hub.ensure_models`)."""
    from engines.llama import LlamaModel, check_shared_vocab
    from engines.reward import build_reward

    threads = threads if threads is not None else default_threads()
    n_seq_max = sequence_capacity(settings)
    with ExitStack() as stack:
        loaded: dict[str, LlamaModel] = {}

        def model(role: str, name: str, key: str | None = None) -> LlamaModel:
            key = key or name
            if key not in loaded:
                entry = catalog.model(name)
                loaded[key] = stack.enter_context(
                    LlamaModel(
                        paths[role],
                        name=name,
                        n_ctx=entry.context,
                        n_seq_max=n_seq_max,
                        n_gpu_layers=n_gpu_layers,
                        n_threads=threads,
                    )
                )
            return loaded[key]

        target = model("target", preset.target)
        # The draft always gets a context of its own, so that its time and
        # tokens are its own even when it is the same file as the target.
        draft = model("draft", preset.draft, key="draft:" + preset.draft) if preset.draft else None
        if draft is not None:
            check_shared_vocab(draft, target)
        reward = build_reward(preset.reward.kind, model("reward", preset.reward.model))
        yield Engines(target=target, reward=reward, draft=draft)
