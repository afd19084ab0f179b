"""Benchmark problems: local JSON Lines, bundled short names, Hugging Face ids.

Every source becomes a list of `Problem(id, problem, answer)`. A local file
holds one JSON object a line with at least `problem` and `answer` (`id` is
made from the line number when absent). Rows without a problem or an answer
are skipped and reported by line number; the rest still run.

Short names (`gsm8k`, `math500`, `amc23`, `olympiadbench`, `aime24`) are the
bundled files: in SPECS_LOCAL_DATA_DIR, else in `../shared/data` next to the
repository, else downloaded from the Hugging Face dataset they come from.
Hub ids are `owner/name[:config[:split]]` and are read from the dataset's own
files (JSON Lines, JSON or Parquet; Parquet needs pyarrow).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class HubDataset:
    repo: str
    config: str | None = None
    split: str = "test"


SHORT_NAMES: dict[str, HubDataset] = {
    "gsm8k": HubDataset("openai/gsm8k", "main", "test"),
    "math500": HubDataset("HuggingFaceH4/MATH-500", None, "test"),
    "amc23": HubDataset("math-ai/amc23", None, "test"),
    "olympiadbench": HubDataset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
    "aime24": HubDataset("HuggingFaceH4/aime_2024", None, "train"),
}

# Field names the known sources use, in order of preference.
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question")
ANSWER_FIELDS = ("answer", "final_answer", "Answer", "expected_answer")
ID_FIELDS = ("id", "unique_id", "ID", "problem_id")
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
NOT_JSON = object()  # a line that did not parse, kept in place to be reported in order


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


@dataclass
class Dataset:
    name: str  # what the user asked for
    source: str  # the file read or the Hub id, for config.json
    problems: list[Problem]
    skipped: list[str] = field(default_factory=list)  # "line 3: no answer"


def data_dirs() -> list[Path]:
    """Where bundled short-name files are looked for, first match wins."""
    dirs = []
    if os.environ.get("SPECS_LOCAL_DATA_DIR"):
        dirs.append(Path(os.environ["SPECS_LOCAL_DATA_DIR"]).expanduser())
    dirs.append(REPO_ROOT.parent / "shared" / "data")
    return dirs


def load_dataset(
    spec: str,
    *,
    limit: int | None = None,
    offset: int = 0,
    ids: Sequence[str] | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> Dataset:
    """Resolve `spec` (a file, a short name or a Hub id) and select problems.

    Selection order: --ids, then --shuffle (seeded), then --offset and --limit.
    """
    dataset = _resolve(spec)
    problems = dataset.problems
    if ids:
        by_id = {p.id: p for p in problems}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise UserError(
                f"{spec} has no problem with id {', '.join(unknown[:3])}; check --ids against the file's `id` fields."
            )
        problems = [by_id[i] for i in dict.fromkeys(ids)]
    if shuffle:
        problems = list(problems)
        random.Random(seed).shuffle(problems)
    problems = problems[offset:]
    if limit is not None:
        problems = problems[:limit]
    dataset.problems = problems
    return dataset


def _resolve(spec: str) -> Dataset:
    path = Path(spec).expanduser()
    if path.is_file():
        return read_jsonl(path, name=spec)
    if spec in SHORT_NAMES:
        for directory in data_dirs():
            bundled = directory / f"{spec}.jsonl"
            if bundled.is_file():
                return read_jsonl(bundled, name=spec)
        hub = SHORT_NAMES[spec]
        return read_hub(hub, name=spec)
    if path.suffix in _DATA_SUFFIXES or (os.sep in spec and not _looks_like_hub_id(spec)):
        raise UserError(f"Dataset file {spec} does not exist; check the path or use a short name ({_short_names()}).")
    if _looks_like_hub_id(spec):
        return read_hub(parse_hub_id(spec), name=spec)
    raise UserError(
        f"Unknown dataset {spec!r}; pass a JSON Lines file, a short name ({_short_names()}) or a Hub id owner/name."
    )


def _short_names() -> str:
    return ", ".join(SHORT_NAMES)


def _looks_like_hub_id(spec: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]*)?(:[\w.-]+)?", spec) is not None


def parse_hub_id(spec: str) -> HubDataset:
    """`owner/name[:config[:split]]`."""
    repo, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    # The benchmarks we know come with the config and split the papers use.
    known = next((d for d in SHORT_NAMES.values() if d.repo == repo), HubDataset(repo))
    return HubDataset(repo, config or known.config, split or (known.split if not config else "test"))


def read_jsonl(path: Path, *, name: str) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read dataset file {path} ({exc}); check the file.") from None
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than any problem is
            rows.append((number, NOT_JSON))
    dataset = rows_to_dataset(rows, name=name, source=str(path), unit="line")
    if not dataset.problems:
        raise UserError(f"{path} has no usable problems (each line needs `problem` and `answer`); check the file.")
    return dataset


def rows_to_dataset(rows: Iterable[tuple[int, Any]], *, name: str, source: str, unit: str = "row") -> Dataset:
    """Rows (number, object) to problems; the bad ones become `skipped` notes."""
    problems: list[Problem] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for number, row in rows:
        if row is NOT_JSON:
            skipped.append(f"{unit} {number}: not JSON")
            continue
        if not isinstance(row, dict):
            skipped.append(f"{unit} {number}: not a JSON object")
            continue
        problem = _first_text(row, PROBLEM_FIELDS)
        answer = _answer(row)
        missing = [what for what, value in (("problem", problem), ("answer", answer)) if not value]
        if missing or problem is None or answer is None:
            skipped.append(f"{unit} {number}: no {' and no '.join(missing)}")
            continue
        problem_id = _first_text(row, ID_FIELDS) or f"{Path(name).stem}-{number}"
        if problem_id in seen:
            skipped.append(f"{unit} {number}: duplicate id {problem_id}")
            continue
        seen.add(problem_id)
        problems.append(Problem(problem_id, problem, answer))
    return Dataset(name=name, source=source, problems=problems, skipped=skipped)


def _first_text(row: dict[str, Any], names: Sequence[str]) -> str | None:
    for key in names:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _number_text(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _answer(row: dict[str, Any]) -> str | None:
    for key in ANSWER_FIELDS:
        value = row.get(key)
        if isinstance(value, list):  # OlympiadBench: several answers
            value = ", ".join(_strip_math(str(v)) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _number_text(value)
        if isinstance(value, str) and value.strip():
            gsm8k = _GSM8K_ANSWER.search(value)
            if gsm8k:  # GSM8K keeps its worked solution before "#### 72"
                return gsm8k.group(1).replace(",", "")
            return _strip_math(value)
    return None


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _strip_math(text: str) -> str:
    text = text.strip()
    if len(text) > 1 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


# --- Hugging Face ------------------------------------------------------------


def read_hub(dataset: HubDataset, *, name: str) -> Dataset:
    """Download the data files of one split of a Hub dataset and read them."""
    import huggingface_hub

    try:
        files = huggingface_hub.list_repo_files(dataset.repo, repo_type="dataset")
        chosen = choose_split_files(files, dataset)
        local = [Path(huggingface_hub.hf_hub_download(dataset.repo, f, repo_type="dataset")) for f in chosen]
    except UserError:
        raise
    except Exception as exc:
        where = f"no local copy of {name} in {', '.join(map(str, data_dirs()))}; " if name in SHORT_NAMES else ""
        raise UserError(
            f"Cannot read {dataset.repo} from the Hugging Face Hub ({type(exc).__name__}); {where}"
            "go online or pass a local JSON Lines file."
        ) from None
    rows = list(_numbered(_read_data_file(p) for p in local))
    source = dataset.repo + "".join(f":{x}" for x in (dataset.config, dataset.split) if x)
    result = rows_to_dataset(rows, name=name, source=source)
    if not result.problems:
        raise UserError(f"{source} has no rows with a problem and an answer; pick another dataset or split.")
    return result


def choose_split_files(files: Sequence[str], dataset: HubDataset) -> list[str]:
    """The data files of the requested config and split, by the Hub's naming
    conventions (`config/split-00000-of-00001.parquet`, `test.jsonl`, ...)."""
    data = [f for f in files if f.endswith(_DATA_SUFFIXES) and not Path(f).name.startswith(".")]
    if dataset.config:
        data = [f for f in data if dataset.config in Path(f).parts[:-1] or Path(f).stem.startswith(dataset.config)]
    in_split = [f for f in data if _split_of(f) == dataset.split]
    if not in_split:
        splits = sorted({s for f in data if (s := _split_of(f))})
        raise UserError(
            f"{dataset.repo} has no {dataset.split!r} split"
            + (f" in config {dataset.config!r}" if dataset.config else "")
            + (
                f"; choose one of {', '.join(splits)} as owner/name:config:split."
                if splits
                else "; check the dataset id."
            )
        )
    configs = sorted({c for f in in_split if (c := _config_of(f))})
    if not dataset.config and len(configs) > 1:
        raise UserError(f"{dataset.repo} has several configs ({', '.join(configs)}); name one as owner/name:config.")
    # One format is enough when a dataset ships the same rows twice.
    for suffix in _DATA_SUFFIXES:
        same = sorted(f for f in in_split if f.endswith(suffix))
        if same:
            return same
    return sorted(in_split)


def _config_of(path: str) -> str | None:
    """The config directory of a data file (`main` in `main/test-....parquet`)."""
    parts = Path(path).parts
    if len(parts) < 2 or parts[0] in ("data", "test", "train", "validation", "dev"):
        return None
    return parts[0]


def _split_of(path: str) -> str | None:
    parts = Path(path).parts
    stem = Path(path).name.split(".")[0]
    name = re.split(r"[-_]\d{5}-of-\d{5}", stem)[0]
    for candidate in (name, *reversed(parts[:-1])):
        for split in ("test", "train", "validation", "dev"):
            if candidate == split or candidate.startswith(split + "-"):
                return split
    return None


def _numbered(chunks: Iterable[Iterable[Any]]) -> Iterator[tuple[int, Any]]:
    number = 0
    for chunk in chunks:
        for row in chunk:
            number += 1
            yield number, row


def _read_data_file(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(
                f"{path.name} is Parquet, which needs pyarrow; run `pip install pyarrow` or pass a JSON Lines file."
            ) from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else list(data.get("data", []))
    return [json.loads(line) for line in text.splitlines() if line.strip()]
