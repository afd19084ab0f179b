"""Turn a resolved preset into running engines: load each GGUF once (or connect
to the servers of a served model), share it between roles that name the same
model (a judge on the target), check that draft and target share a
vocabulary and that served models can be teacher-forced, and free everything
on exit. Every check runs here, before a search starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Role
from app.errors import UserError
from app.presets import ModelInstance, ResolvedPreset
from app.search.settings import SearchSettings
from app.search.types import Engines
from engines.gguf_info import has_gguf_magic

if TYPE_CHECKING:
    from engines.base import LanguageModel, RewardModel
    from engines.llama import LlamaModel
    from engines.remote.model import RemoteModel
    from engines.value_head import ValueHead, ValueHeadReward


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

    def load(instance: ModelInstance, *, hidden_states: bool = False) -> LlamaModel | RemoteModel:
        if instance.entry.remote:
            return connect(instance)
        layer = head.layer if head is not None and hidden_states else None
        return _load(
            preset, instance, n_seq_max, threads, n_gpu_layers, hidden_states=hidden_states, hidden_layer=layer
        )

    spec = preset.preset.reward
    # A value head reads the target's hidden states: load its head before any model.
    head = load_value_head(preset) if spec.kind == "value-head" else None
    with ExitStack() as stack:
        models: dict[Role, LlamaModel | RemoteModel] = {}
        for instance in preset.instances():
            model = load(instance, hidden_states=head is not None and "target" in instance.roles)
            stack.callback(model.close)
            models.update(dict.fromkeys(instance.roles, model))
            if "draft" in instance.roles:  # the target is loaded first: refuse a mismatch before the reward model
                target = models["target"]
                if isinstance(model, LlamaModel) and isinstance(target, LlamaModel):
                    check_shared_vocab(model, target)
                else:
                    from engines.remote.checks import check_shared_vocab as check_served_vocab

                    check_served_vocab(model, target)
        draft: LanguageModel | None = models.get("draft")
        if head is not None:
            target = models["target"]
            assert isinstance(target, LlamaModel), "the catalog keeps value heads on local targets"
            yield Engines(target=target, reward=value_head_reward(head, preset, target), draft=draft)
        else:
            yield Engines(target=models["target"], reward=build_reward(spec.kind, models["reward"]), draft=draft)


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


def check_still_sound(instance: ModelInstance, preset: str) -> None:
    """Refuse a file that was deleted or replaced by something that is not a GGUF
    after the preset found it (between `models` and `solve`, say): one sentence
    that names the fix. Only the first bytes are read: the loader parses the
    header itself (a damaged one is its one-sentence ModelLoadError), and
    parsing it twice would cost a vocabulary's worth of time on every start."""
    entry, path = instance.entry, instance.path
    assert path is not None
    fix = f"run `specs-local download {preset}` to fetch it again" if entry.repo else f"put {entry.file} back there"
    if not path.is_file():
        raise UserError(f"{path}, the file of {entry.name}, is no longer there; {fix}.")
    if not has_gguf_magic(path):
        raise UserError(f"{path}, the file of {entry.name}, is not a GGUF file; {fix}.")


def _load(
    preset: ResolvedPreset,
    instance: ModelInstance,
    n_seq_max: int,
    threads: int | None,
    n_gpu_layers: int | None,
    *,
    hidden_states: bool = False,
    hidden_layer: int | None = None,
) -> LlamaModel:
    from engines.llama import LlamaModel

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
        hidden_states=hidden_states,
        hidden_layer=hidden_layer,
    )


def load_value_head(preset: ResolvedPreset) -> ValueHead:
    """The preset's head file, read and checked against the target's file
    (its sha256 pinned in the catalog, or computed) before any model loads."""
    from engines.value_head import check_head_fits, load_head

    path = preset.preset.reward.head_path
    assert path is not None, "the catalog requires a head for the value-head kind"
    head = load_head(path)
    target = preset.target
    if target.path is not None:
        sha = target.entry.sha256 or _sha256(target.path)
        check_head_fits(head, path, model_name=target.entry.name, hidden_size=head.hidden_size, model_sha256=sha)
    return head


def _sha256(path: Path) -> str:
    from app.hub import sha256_of

    return sha256_of(path)


def value_head_reward(head: ValueHead, preset: ResolvedPreset, target: LlamaModel) -> ValueHeadReward:
    """The reward, once the target shows its hidden size matches the head's."""
    from engines.value_head import ValueHeadReward, check_head_fits

    path = preset.preset.reward.head_path
    assert path is not None
    check_head_fits(head, path, model_name=preset.target.entry.name, hidden_size=target.n_embd, model_sha256=None)
    assert target.hidden_layer == head.layer, "open_engines opens the target at the head's layer"
    return ValueHeadReward(head, model_name=preset.target.entry.name)


@dataclass
class TrainingModels:
    draft: LlamaModel | None
    target: LlamaModel  # with hidden states on
    judge: RewardModel  # the yes/no judge on the target, for comparison


@contextmanager
def open_training_models(
    preset: ResolvedPreset,
    *,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    hidden_layer: int | None = None,
) -> Iterator[TrainingModels]:
    """The draft and the target (hidden states on, of `hidden_layer` or the
    final ones) of a preset, and a judge on the target."""
    from engines.reward import build_reward
    from engines.vocab import check_shared_vocab

    n_seq_max = 32
    with ExitStack() as stack:
        target_instance = next(i for i in preset.instances() if "target" in i.roles)
        target = stack.enter_context(
            _load(
                preset, target_instance, n_seq_max, threads, n_gpu_layers, hidden_states=True, hidden_layer=hidden_layer
            )
        )
        draft = None
        if (
            preset.draft is not None and not preset.draft.entry.remote
        ):  # train-head keeps served drafts out of its plans
            draft_instance = next(i for i in preset.instances() if "draft" in i.roles)
            draft = stack.enter_context(_load(preset, draft_instance, n_seq_max, threads, n_gpu_layers))
            check_shared_vocab(draft, target)
        yield TrainingModels(draft=draft, target=target, judge=build_reward("judge", target))
