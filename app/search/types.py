"""The models a search runs on, by role."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import LanguageModel, RewardModel


@dataclass
class Engines:
    target: LanguageModel
    reward: RewardModel
    # None when the preset has no draft; SPECS, RSD and beam-draft then refuse.
    draft: LanguageModel | None = None
