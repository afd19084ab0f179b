"""models.toml: model entries and presets, validated with pydantic.

The built-in file ships with the package; a user file in the platform config
directory (or the one SPECS_LOCAL_CONFIG names) adds entries or overrides
fields of existing ones, key by key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.search.settings import Method, SearchSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_CATALOG = Path(__file__).with_name("models.toml")
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "specs-dev-models"

RewardKind = Literal["judge", "token-prm", "step-tag-prm", "value-head", "pooled-prm"]
# Where a server entry's API key is read from unless it names another variable.
DEFAULT_API_KEY_ENV = "SPECS_LOCAL_API_KEY"
# Where a relative `head` path of a value-head reward is looked for after the
# user's config folder: the heads shipped with the package.
BUILTIN_HEADS = Path(__file__).with_name("heads")
Role = Literal["draft", "target", "reward"]


class ConfigError(Exception):
    """The catalog or a user file is invalid; the message says where."""


class ModelEntry(BaseModel):
    """A GGUF file (`file` with `repo`, `path` or `local`) or a model on vLLM
    servers (`url`, one or a list that shares the load, and the `served` name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    repo: str | None = None  # Hugging Face repo id
    file: str = ""  # GGUF file name in the repo (or in the models directory)
    revision: str = "main"
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, ge=0)  # bytes, for planning before a download
    path: str | None = None  # a local file; wins over everything else
    local: bool = False  # lives in SPECS_LOCAL_MODELS_DIR, never downloaded
    context: int = Field(default=4096, ge=256)
    description: str = ""
    url: str | list[str] | None = None  # a vLLM server's OpenAI base URL, e.g. "http://host:8000/v1"
    served: str | None = None  # the name the server serves the model under (default: the entry's name)
    api_key_env: str = DEFAULT_API_KEY_ENV  # the environment variable holding the servers' API key

    @model_validator(mode="after")
    def _has_a_source(self) -> ModelEntry:
        if self.url is not None:
            if not self.urls:
                raise ValueError("`url` names no server; give one URL or a list of them")
            if self.repo or self.path or self.local or self.file:
                raise ValueError("a server entry (`url`) names no file: drop `repo`, `file`, `path` and `local`")
            return self
        if self.served is not None:
            raise ValueError("`served` belongs to a server entry; add its `url`")
        if not self.file:
            raise ValueError("needs a `file` (with a `repo`, a `path` or `local = true`), or a server `url`")
        if not (self.repo or self.path or self.local):
            raise ValueError("needs a `repo`, a `path`, or `local = true`")
        return self

    @property
    def remote(self) -> bool:
        """Whether the model runs on servers rather than from a file here."""
        return self.url is not None

    @property
    def urls(self) -> list[str]:
        urls = [self.url] if isinstance(self.url, str) else list(self.url or [])
        return [u.strip() for u in urls if u.strip()]

    @property
    def served_name(self) -> str:
        return self.served or self.name

    @property
    def local_path(self) -> Path | None:
        """Where the file is when it is not in the Hugging Face cache."""
        if self.path:
            return Path(os.path.expandvars(self.path)).expanduser()
        if self.local:
            return models_dir() / self.file
        return None


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RewardKind
    model: str
    head: str | None = None  # value-head only: the head file (`specs-local train-head` makes one)

    @model_validator(mode="after")
    def _head_for_value_heads(self) -> RewardSpec:
        if self.kind == "value-head" and not self.head:
            raise ValueError("a value-head reward needs `head`, the file `specs-local train-head` wrote")
        if self.kind != "value-head" and self.head:
            raise ValueError(f"`head` belongs to the value-head kind, not {self.kind}")
        return self

    @property
    def head_path(self) -> Path | None:
        """The head file: absolute or `~` paths as given; a relative one in the
        user's config folder when it is there, else among the packaged heads."""
        if not self.head:
            return None
        path = Path(os.path.expandvars(self.head)).expanduser()
        if path.is_absolute():
            return path
        mine = user_config_path().parent / path
        return mine if mine.exists() else BUILTIN_HEADS / path


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str = ""
    draft: str | None = None
    target: str
    reward: RewardSpec
    method: Method = "specs"
    search: dict[str, Any] = Field(default_factory=dict)

    def settings(self, **overrides: Any) -> SearchSettings:
        """The preset's search settings with explicit overrides on top."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return SearchSettings(**{**self.search, **given})

    def roles(self) -> dict[Role, str]:
        """The model each role names, in role order: draft (if any), target, reward."""
        roles: dict[Role, str] = {"target": self.target, "reward": self.reward.model}
        if self.draft:
            roles = {"draft": self.draft, **roles}
        return roles


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_preset: str
    models: dict[str, ModelEntry]
    presets: dict[str, Preset]

    @model_validator(mode="before")
    @classmethod
    def _name_entries(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)  # never write the entry names back into the caller's tables
        for table in ("models", "presets"):
            entries = data.get(table)
            if isinstance(entries, dict):
                data[table] = {
                    key: {"name": key, **value} if isinstance(value, dict) else value for key, value in entries.items()
                }
        return data

    @model_validator(mode="after")
    def _references_resolve(self) -> Catalog:
        for preset in self.presets.values():
            for role, model in preset.roles().items():
                if model not in self.models:
                    raise ValueError(f"preset {preset.name!r}: {role} model {model!r} is not defined")
            preset.settings()  # the preset's search table must validate
            if preset.reward.kind == "value-head" and preset.reward.model != preset.target:
                raise ValueError(
                    f"preset {preset.name!r}: a value-head reward reads the target's hidden states, "
                    f"so its model must be the target {preset.target!r}"
                )
            reward_entry = self.models[preset.reward.model]
            if preset.reward.kind == "value-head" and reward_entry.remote:
                raise ValueError(
                    f"preset {preset.name!r}: a value-head reward reads hidden states, which a server does not return; "
                    "run the target from a file"
                )
            if preset.reward.kind == "pooled-prm" and not reward_entry.remote:
                raise ValueError(
                    f"preset {preset.name!r}: a pooled-prm reward is a PRM served by vLLM for pooling; "
                    f"give {preset.reward.model!r} a server `url`"
                )
        if self.default_preset not in self.presets:
            raise ValueError(f"default_preset {self.default_preset!r} is not defined")
        return self

    def preset(self, name: str | None) -> Preset:
        name = name or self.default_preset
        if name not in self.presets:
            known = ", ".join(sorted(self.presets))
            raise ConfigError(f"Unknown preset {name!r}; choose one of: {known}.")
        return self.presets[name]

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            known = ", ".join(sorted(self.models))
            raise ConfigError(f"Unknown model {name!r}; choose one of: {known}.")
        return self.models[name]


def models_dir() -> Path:
    """Where `local` models (the development models) are looked for."""
    return Path(os.environ.get("SPECS_LOCAL_MODELS_DIR") or DEFAULT_MODELS_DIR).expanduser()


def user_config_path() -> Path:
    env = os.environ.get("SPECS_LOCAL_CONFIG")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_config_path("specs-local") / "models.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or remove it.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 or remove it.") from None
    except RecursionError:
        raise ConfigError(f"{path} nests arrays or tables too deeply to read; fix or remove it.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path} ({exc.strerror}).") from None


# Tables an override replaces whole: a reward's kind, model and head only make
# sense together (a judge given over a value head must not keep its head).
WHOLE_TABLES = frozenset({"reward"})


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key (but those in WHOLE_TABLES); any other value in
    `override` replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in WHOLE_TABLES:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_catalog(user_file: Path | None = None) -> Catalog:
    data = _read_toml(BUILTIN_CATALOG)
    user_file = user_file or user_config_path()
    if user_file.is_file():
        data = merge(data, _read_toml(user_file))
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(repr(p) if isinstance(p, str) and not p.isprintable() else str(p) for p in first["loc"])
        message = " ".join(first["msg"].split())  # one line, whatever a validator said
        raise ConfigError(f"Invalid model catalog ({user_file} over the built-in one): {where}: {message}.") from None


def write_user_overrides(update: dict[str, Any], user_file: Path | None = None) -> Path:
    """Merge `update` into the user file (created if needed) and return its path."""
    user_file = user_file or user_config_path()
    current = _read_toml(user_file) if user_file.is_file() else {}
    merged = merge(current, update)
    load_catalog_from = merge(_read_toml(BUILTIN_CATALOG), merged)
    Catalog.model_validate(load_catalog_from)  # never write a file that will not load
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text(dump_toml(merged), encoding="utf-8")
    return user_file


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the shapes of this catalog (tables of scalars)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix: list[str], t: dict[str, Any]) -> None:
        plain = {k: v for k, v in t.items() if not isinstance(v, dict) or not _is_table(v)}
        nested = {k: v for k, v in t.items() if k not in plain}
        if prefix and plain:
            lines.append(f"[{'.'.join(_key(p) for p in prefix)}]")
        for k, v in plain.items():
            lines.append(f"{_key(k)} = {scalar(v)}")
        if plain:
            lines.append("")
        for k, v in nested.items():
            table(prefix + [k], v)

    table([], data)
    return "\n".join(lines).rstrip() + "\n"


def _is_table(v: dict[str, Any]) -> bool:
    # Nested tables of tables become [a.b] headers; flat ones stay inline.
    return any(isinstance(x, dict) for x in v.values()) or len(v) > 3


def _key(k: str) -> str:
    import re

    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k + '"'
