"""A preset resolved into what it names: each role's model entry and its file here.

`resolve_preset` asks the catalog for the preset's roles and looks for each
model's file once (a target that is also the judge is looked for once; never
the network). The commands, the app and `app.runtime` all start from the one
`ResolvedPreset` it gives, so what stands behind a role (a GGUF file on this
machine, or a model on vLLM servers) is decided here and read everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from app.config import Catalog, ModelEntry, Preset, Role
from app.hub import find_model
from engines.base import VocabularyMismatch


@dataclass(frozen=True)
class RoleModel:
    """The model a role names, and its file on this machine (None while it is not
    here, and always for a model on servers)."""

    role: Role
    entry: ModelEntry
    path: Path | None

    @property
    def present(self) -> bool:
        """Whether nothing needs downloading (a server entry has nothing to download)."""
        return self.path is not None or self.entry.remote


@dataclass(frozen=True)
class ModelInstance:
    """One model as app.runtime loads it, and the roles that use it."""

    entry: ModelEntry
    path: Path | None
    roles: tuple[Role, ...]


@dataclass(frozen=True)
class ResolvedPreset:
    preset: Preset
    roles: Mapping[Role, RoleModel]  # in role order: draft (if any), target, reward

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def draft(self) -> RoleModel | None:
        return self.roles.get("draft")

    @property
    def target(self) -> RoleModel:
        return self.roles["target"]

    @property
    def reward(self) -> RoleModel:
        return self.roles["reward"]

    @property
    def models(self) -> list[RoleModel]:
        """Each model once, at the first role that names it (a target may also be the judge)."""
        first: dict[str, RoleModel] = {}
        for role in self.roles.values():
            first.setdefault(role.entry.name, role)
        return list(first.values())

    @property
    def missing(self) -> list[ModelEntry]:
        """The models whose files are not on this machine, each once, in role order."""
        return [role.entry for role in self.models if not role.present]

    @property
    def ready(self) -> bool:
        return not self.missing

    @property
    def remote(self) -> bool:
        """Whether every role runs on servers (nothing loads on this machine)."""
        return all(role.entry.remote for role in self.roles.values())

    def with_files(self, files: Mapping[str, Path]) -> ResolvedPreset:
        """The same preset with the models that `files` names (by model name) at those paths."""
        roles = {
            name: replace(role, path=files[role.entry.name]) if role.entry.name in files else role
            for name, role in self.roles.items()
        }
        return replace(self, roles=roles)

    def instances(self) -> list[ModelInstance]:
        """The models app.runtime loads, in loading order: the target (shared with a
        judge on the target), the draft, then a reward model of its own. The draft
        always gets a context of its own, so that its time and tokens are its own
        even when it is the same file as the target."""
        target, reward, draft = self.target, self.reward, self.draft
        shared = reward.entry.name == target.entry.name
        loaded = [ModelInstance(target.entry, target.path, ("target", "reward") if shared else ("target",))]
        if draft is not None:
            loaded.append(ModelInstance(draft.entry, draft.path, ("draft",)))
        if not shared:
            loaded.append(ModelInstance(reward.entry, reward.path, ("reward",)))
        return loaded


def resolve_preset(catalog: Catalog, preset: Preset | str | None) -> ResolvedPreset:
    """The preset (by name; None: the catalog's default) with each role's model and file."""
    chosen = preset if isinstance(preset, Preset) else catalog.preset(preset)
    found: dict[str, Path | None] = {}
    roles: dict[Role, RoleModel] = {}
    for role, name in chosen.roles().items():
        entry = catalog.model(name)
        if name not in found:
            found[name] = find_model(entry)
        roles[role] = RoleModel(role, entry, found[name])
    return ResolvedPreset(chosen, roles)


def check_vocabulary(preset: ResolvedPreset) -> str | None:
    """Raise VocabularyMismatch if the draft and target files cannot pair; a note if
    they could not be compared. Only for a preset whose files are here."""
    draft, target = preset.draft, preset.target
    if draft is None or draft.entry.remote or target.entry.remote:
        return None  # a pair with a model on servers is compared when it is opened
    assert draft.path is not None and target.path is not None, "compare only files that are here"
    try:
        from engines.vocab import check_vocab_files
    except ImportError as exc:
        return f"The vocabularies of {preset.name}'s draft and target were not compared ({exc})."
    try:
        check_vocab_files(draft.path, target.path)
    except VocabularyMismatch as exc:
        raise VocabularyMismatch(f"Preset {preset.name}: {exc}") from None
    return None
