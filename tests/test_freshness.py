"""Every read model carries a freshness policy derived from one latency target,
applied in one place; base tables carry none (the apps write them on no
schedule of ours)."""

from __future__ import annotations

import importlib
from datetime import timedelta

import dagster as dg
import pytest

import orchestration.definitions
from orchestration.assets import BASE_TABLES
from orchestration.errors import ProgressError
from orchestration.freshness import TARGET_ENV, freshness_target_seconds, read_model_freshness_policy
from orchestration.read_models import READ_MODELS


def policies(defs: dg.Definitions) -> dict[str, dg.FreshnessPolicy | None]:
    graph = defs.get_repository_def().asset_graph
    return {key.to_user_string(): graph.get(key).freshness_policy for key in graph.get_all_asset_keys()}


def windows(policy) -> tuple[timedelta, timedelta]:
    return policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()


@pytest.fixture
def reloaded_defs(monkeypatch):
    """Definitions as a code server loads them under some environment."""

    def load(**env: str) -> dg.Definitions:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(orchestration.definitions).defs

    yield load
    monkeypatch.delenv(TARGET_ENV, raising=False)
    importlib.reload(orchestration.definitions)


def test_every_read_model_warns_at_a_minute_and_fails_at_two_by_default(reloaded_defs, monkeypatch):
    monkeypatch.delenv(TARGET_ENV, raising=False)
    found = policies(reloaded_defs())
    for model in READ_MODELS:
        assert windows(found[model.name]) == (timedelta(minutes=1), timedelta(minutes=2)), model.name
    for table in BASE_TABLES:
        assert found[table] is None, table


def test_windows_follow_the_configured_target(reloaded_defs):
    found = policies(reloaded_defs(**{TARGET_ENV: "120"}))
    assert {windows(found[m.name]) for m in READ_MODELS} == {(timedelta(minutes=2), timedelta(minutes=8))}


def test_a_target_under_a_minute_keeps_dagsters_minimum_windows():
    assert windows(read_model_freshness_policy(5)) == (timedelta(minutes=1), timedelta(minutes=2))


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_target_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(TARGET_ENV, value)
    with pytest.raises(ProgressError, match=TARGET_ENV):
        freshness_target_seconds()
