"""A value head: a reward read off the target's own hidden state.

reward = sigmoid(w . (h - mean) / std + b), with h the target's hidden state
at the end of a step (the input of its output layer, after the last norm; or
the output of one middle layer, which the head file names), which the target
already computes when it teacher-forces a draft or samples a step of its own.
So the reward costs one dot product and no model call.

A head file is a small safetensors file: the tensors `weight`, `mean`, `std`
(float32, hidden size each) and `bias` (one value), and metadata that says
what it was made for (the target file's sha256 and hidden size, the layer it
reads) and how well
it did (the training data and the held-out AUC table, as JSON). A head is
only valid for the exact model file it was trained on: loading it against
another is an error, never a silently wrong reward.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineError, ModelUsage, RewardQuery, StopFn, timed

FORMAT = "specs-local value head 1"
FINAL_LAYER = "final"  # the metadata's `layer` for the final state (also when it is absent)


class HeadFileError(EngineError):
    """A head file is missing, damaged or made for another model."""


@dataclass(frozen=True)
class ValueHead:
    weight: np.ndarray  # (hidden,)
    bias: float
    mean: np.ndarray  # (hidden,) feature standardisation
    std: np.ndarray  # (hidden,)
    model_sha256: str
    info: Mapping[str, Any] = field(default_factory=dict)  # training data, AUC table, ...
    layer: int | None = None  # the layer whose output it reads (0-based); None: the final state

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, states: np.ndarray) -> np.ndarray:
        """w . standardised(h) + b for each row of `states` (n, hidden)."""
        return ((states - self.mean) / self.std) @ self.weight + self.bias

    def rewards(self, states: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(states)))

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {
            "weight": self.weight.astype(np.float32),
            "bias": np.asarray([self.bias], np.float32),
            "mean": self.mean.astype(np.float32),
            "std": self.std.astype(np.float32),
        }
        metadata = {
            "format": FORMAT,
            "model_sha256": self.model_sha256,
            "hidden_size": str(self.hidden_size),
            "layer": FINAL_LAYER if self.layer is None else str(self.layer),
            "info": json.dumps(dict(self.info), ensure_ascii=False),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)


def load_head(path: Path) -> ValueHead:
    """Read a head file; HeadFileError (one sentence) when it is not one."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise HeadFileError(f"The value head {path} does not exist; train one with `specs-local train-head`.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError) as e:
        raise HeadFileError(
            f"The value head {path} is damaged or not a head file ({e}); train it again with `specs-local train-head`."
        ) from None
    if metadata.get("format") != FORMAT:
        raise HeadFileError(f"{path} is not a specs-local value head (format {metadata.get('format')!r}).")
    try:
        weight, bias, mean, std = (np.asarray(tensors[k], np.float64) for k in ("weight", "bias", "mean", "std"))
        hidden = int(metadata["hidden_size"])
        info = json.loads(metadata.get("info", "{}"))
        written = metadata.get("layer", FINAL_LAYER)
        layer = None if written == FINAL_LAYER else int(written)
        if layer is not None and layer < 0:
            raise ValueError(f"layer {layer}")
    except (KeyError, ValueError) as e:
        raise HeadFileError(
            f"The value head {path} is incomplete ({e}); train it again with `specs-local train-head`."
        ) from None
    if weight.shape != (hidden,) or mean.shape != (hidden,) or std.shape != (hidden,) or bias.shape != (1,):
        raise HeadFileError(f"The value head {path} has tensors of the wrong shape for hidden size {hidden}.")
    if not (np.isfinite(weight).all() and np.isfinite(mean).all() and (std > 0).all() and math.isfinite(bias[0])):
        raise HeadFileError(f"The value head {path} holds non-finite weights; train it again.")
    return ValueHead(weight, float(bias[0]), mean, std, metadata.get("model_sha256", ""), info, layer)


def check_head_fits(
    head: ValueHead, path: Path, *, model_name: str, hidden_size: int, model_sha256: str | None
) -> None:
    """The head was trained on this model file; HeadFileError naming both otherwise."""
    if head.hidden_size != hidden_size:
        raise HeadFileError(
            f"The value head {path} was made for a model with hidden size {head.hidden_size}, "
            f"but {model_name} has {hidden_size}; train a head for it with `specs-local train-head`."
        )
    if model_sha256 is not None and head.model_sha256 and head.model_sha256 != model_sha256:
        raise HeadFileError(
            f"The value head {path} was made for another model file (sha256 {head.model_sha256[:12]}…) "
            f"than {model_name} ({model_sha256[:12]}…); train a head for it with `specs-local train-head`."
        )


class ValueHeadReward:
    """The reward kind `value-head`: the head applied to the hidden state the
    target produced at the end of each candidate (`RewardQuery.policy_state`)."""

    kind = "value-head"

    def __init__(self, head: ValueHead, *, model_name: str) -> None:
        self.head = head
        self.name = f"{self.kind}:{model_name}"
        self.usage = ModelUsage()
        # The search asks the target for hidden states only when a reward reads them.
        self.reads_policy_states = True

    def reset(self) -> None:
        """No per-question state: the head reads only the target's states."""

    def score(self, queries: Sequence[RewardQuery], *, should_stop: StopFn | None = None) -> list[float]:
        with timed(self.usage):
            if not queries:
                return []
            if all(q.policy_state is None for q in queries):
                raise EngineError(
                    "the value-head reward needs the target's hidden states; "
                    "open the target with hidden states on (the runtime does this for value-head presets)."
                )
            # A one-token step right after the prompt has no state (prefill never
            # computes them): it gets the head's reward for an average state,
            # sigmoid(b), standardised states having mean 0.
            prior = 1.0 / (1.0 + math.exp(-self.head.bias))
            return [
                prior
                if q.policy_state is None
                else float(self.head.rewards(np.asarray(q.policy_state, np.float64)[None])[0])
                for q in queries
            ]
