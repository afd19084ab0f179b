"""The method registry: one entry per method, read by run, the settings and the readers."""

from __future__ import annotations

import typing

import pytest

from app.search import methods, run
from app.search.context import SearchContext
from app.search.events import Event, SearchStarted, StepAccepted
from app.search.methods import REGISTRY, MethodSpec, draftless_methods, method_spec, needs_draft
from app.search.settings import SearchSettings
from app.search.steps import Step
from engines.testing.scripted import ARITHMETIC_QUESTION, scripted_engines


def test_the_settings_and_the_preset_schema_take_their_names_from_the_registry() -> None:
    from app.search import settings

    assert tuple(REGISTRY) == settings.METHODS
    assert typing.get_args(settings.Method) == tuple(REGISTRY)


def test_every_threshold_is_a_setting_with_help_and_a_bound() -> None:
    fields = SearchSettings.model_fields
    for spec in REGISTRY.values():
        assert spec.description and spec.search
        for threshold in spec.thresholds:
            assert threshold.setting in fields and threshold.help
            assert threshold.bounds in ("tilted", "reward")


def test_the_registry_answers_what_the_readers_ask() -> None:
    assert [m for m in REGISTRY if needs_draft(m)] == ["specs", "beam-draft", "rsd"]
    assert not needs_draft("a-label-of-a-bench-arm")
    assert [m for m, spec in REGISTRY.items() if spec.hands_over] == ["specs", "rsd"]
    assert [m for m, spec in REGISTRY.items() if spec.selection == "vote"] == ["best-of-n"]
    assert draftless_methods() == "beam, best-of-n or greedy"
    with pytest.raises(ValueError, match="Unknown method 'magic'; choose one of specs, beam"):
        method_spec("magic")


@pytest.mark.parametrize("method", list(REGISTRY))
def test_search_started_carries_the_thresholds_at_the_run_settings(method: str) -> None:
    engines = scripted_engines()
    events: list[Event] = []
    settings = SearchSettings(tau_accept=6.5, tau_switch=0.8, rsd_delta=0.6)
    run(method, ARITHMETIC_QUESTION, engines, settings, emit=events.append, clock=engines.clock)
    started = events[0]
    assert isinstance(started, SearchStarted)
    values = {t.name: (t.value, t.bounds) for t in started.thresholds}
    expected = {
        "specs": {"tau_accept": (6.5, "tilted"), "tau_switch": (0.8, "reward")},
        "rsd": {"rsd_delta": (0.6, "reward")},
    }
    assert values == expected.get(method, {})


def _draft_then_keep(ctx: SearchContext) -> None:
    """A method written for this test: the draft's first candidate, judged, always kept."""
    beams = [ctx.start(("draft",))]
    for number in range(ctx.settings.max_steps):
        step = Step.begin(ctx, number, "draft", beams)
        drafts = step.draw(1, temperature=0.0)
        step.reward(drafts)
        beams = step.keep(step.collect(drafts))
        if not beams:
            return


def test_a_new_method_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.search import settings

    spec = MethodSpec("draft-keep", _draft_then_keep, "The draft's first candidate, always kept.", needs_draft=True)
    monkeypatch.setitem(methods.REGISTRY, spec.name, spec)
    assert "draft-keep" in settings.METHODS
    engines = scripted_engines()
    events: list[Event] = []
    finished = run("draft-keep", ARITHMETIC_QUESTION, engines, SearchSettings(), emit=events.append)
    accepted = [e for e in events if isinstance(e, StepAccepted)]
    assert accepted and all(e.origin == "draft" and e.reward is not None for e in accepted)
    assert finished.stats.draft_steps == finished.stats.steps and engines.live == 0
    with pytest.raises(ValueError, match="draft-keep needs a draft model"):
        run("draft-keep", ARITHMETIC_QUESTION, scripted_engines(draft=None), SearchSettings())
