"""A failing integration hook costs one warning, never the training run."""

from __future__ import annotations

import warnings

import pytest

from trainmon import TrainmonWarning
from trainmon.agent.integrations import safe_hooks


def test_a_failing_hook_returns_none_and_warns_once_per_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_hooks, "_warned", set())
    calls = []

    @safe_hooks.never_raises
    def on_log(logs: dict) -> str:
        calls.append(logs)
        return logs["loss"]

    assert on_log({"loss": "kept"}) == "kept"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert on_log({}) is None
        assert on_log({}) is None
    assert [(w.category, str(w.message)) for w in caught] == [
        (TrainmonWarning, "test_a_failing_hook_returns_none_and_warns_once_per_hook.<locals>.on_log failed "
                          "(monitoring only; training goes on): KeyError('loss')")]
    assert len(calls) == 3, "every call still reaches the hook"


def test_under_w_error_it_still_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_hooks, "_warned", set())

    @safe_hooks.never_raises
    def on_save() -> None:
        raise OSError("disk full")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert on_save() is None
