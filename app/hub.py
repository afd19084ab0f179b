"""Model files on this machine: where each catalog entry is, and whether a file is sound.

Finding a model never touches the network: an entry's `path`, then the models
directory, then the Hugging Face cache at the entry's revision. Bringing a
file from the Hub is app/transfer.py's work; asking whether to is the
command line's.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, at import; this module
reads them on every call, so a change made after start-up (the app's
settings, the tests) takes effect.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from app.config import ModelEntry, models_dir, user_config_path
from app.errors import UserError
from engines.gguf_info import DamagedGGUF, has_gguf_magic, read_header

FETCH_SCRIPT = "scripts/fetch-dev-models.sh"
_HASH_BLOCK = 8 * 2**20
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9A-Z]+)*|BF16|FP16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)

# Where progress lines go: the command line passes its stderr writer.
Echo = Callable[[str], None]


class ModelFileRejected(UserError):
    """A file failed the GGUF magic or sha256 check and has been taken out of use."""


# -- environment, read at call time ------------------------------------------


def hub_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


# -- finding models -----------------------------------------------------------


def find_model(entry: ModelEntry) -> Path | None:
    """The model's file if it is on this machine: path, models dir, HF cache (never the network).
    A server entry has none."""
    if entry.remote:
        return None
    if entry.local_path is not None and entry.local_path.is_file():
        return entry.local_path
    in_models_dir = models_dir() / entry.file
    if in_models_dir.is_file():
        return in_models_dir
    if entry.repo:
        try:
            cached = try_to_load_from_cache(entry.repo, entry.file, cache_dir=hub_cache_dir(), revision=entry.revision)
        except HFValidationError:  # not a repo id, so not in the cache; `download` says what is wrong
            return None
        if isinstance(cached, str):
            return Path(cached)
    return None


def quantisation(filename: str) -> str | None:
    """The quantisation named in a GGUF file name, e.g. Q4_K_M."""
    found = _QUANT.findall(Path(filename).stem)
    return found[-1].upper() if found else None


def format_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            decimals = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{decimals}f} {unit}"
    return f"{n} B"


def where_to_put(entries: Sequence[ModelEntry]) -> str:
    """One sentence for models that are never downloaded and are not there."""
    dev = [e for e in entries if e.local]
    if dev:
        target = models_dir()
        names = " and ".join(e.name for e in dev)
        files = " and ".join(e.file for e in dev)
        are = "is a development model that is" if len(dev) == 1 else "are development models that are"
        return (
            f"{names} {are} never downloaded from the Hub: put {files} in {target} (or point"
            f" SPECS_LOCAL_MODELS_DIR at their folder), e.g. with `{FETCH_SCRIPT} {target}`."
        )
    entry = entries[0]
    return f"{entry.name} is a local file (path = {entry.path}) that is not there; put the file there or fix `path`."


# -- verifying ------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileProblem:
    """Why a model file is not fit for use; `text` follows the file's name in a sentence."""

    kind: Literal["not-gguf", "sha256", "header"]
    text: str


def file_problem(path: Path, expected_sha256: str | None, *, name: str, echo: Echo) -> FileProblem | None:
    """What is wrong with a model file, if anything: not a GGUF, not the expected sha256,
    or a header that does not parse (which no sha256 catches when the file was made
    that way) or a tensor table that runs past the file's end. Every check runs each
    time it is asked: a verdict is never assumed."""
    if not has_gguf_magic(path):
        return FileProblem("not-gguf", "is not a GGUF file")
    if expected_sha256 is not None:
        echo(f"verifying sha256 of {name} ({format_size(path.stat().st_size)})")
        actual = sha256_of(path)
        if actual != expected_sha256:
            return FileProblem("sha256", f"has sha256 {actual[:12]}… where {expected_sha256[:12]}… was expected")
    try:
        read_header(path)
    except DamagedGGUF as exc:
        return FileProblem("header", exc.reason)
    return None


def verify_local(entry: ModelEntry, path: Path, *, echo: Echo) -> None:
    """Check a model found on disk (magic, pinned sha256); a bad file is taken out of use."""
    problem = file_problem(path, entry.sha256, name=entry.file, echo=echo)
    if problem is None:
        return
    if path.is_symlink():  # a Hugging Face cache entry: drop the link and its blob
        path.resolve().unlink(missing_ok=True)
        path.unlink()
        where = "its cache entry was deleted"
    else:  # a file the user put in place is not ours to delete
        aside = path.with_name(path.name + ".rejected")
        os.replace(path, aside)
        where = f"it was moved to {aside}"
    wanted = (
        f", or if this file is wanted, update `sha256` for {entry.name} in {user_config_path()}"
        if problem.kind == "sha256"
        else ""
    )
    raise ModelFileRejected(f"{path} {problem.text}; {where} so nothing uses it: download it again{wanted}.")
