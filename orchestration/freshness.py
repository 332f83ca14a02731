"""How fresh the read models must be, for Dagster: one setting, one policy.

PROGRESS_FRESHNESS_TARGET_SECONDS (default 30) is the latency the product
aims at, from a change's commit to its refresh's commit; every materialization
records the lag it achieved (lag_seconds_p50/p95/max). The Dagster freshness
policy is derived from it: WARN once the last refresh of a read model is older
than the target, FAIL past FAIL_MULTIPLE times the target. Dagster accepts no
window under a minute, so both are at least that (and FAIL a minute past WARN).

Dagster judges a time-window policy by the age of the last materialization,
and a read model materialises only when a run refreshed something of it, so a
read model nobody changed for a while turns WARN, then FAIL, although nothing
waits. Its latest materialization's oldest_queued_age_seconds and the
queue_not_stale check tell the two apart.
"""

from datetime import timedelta

import dagster as dg

from orchestration import settings
from orchestration.read_models import BY_NAME

TARGET_ENV = settings.FRESHNESS_TARGET_SECONDS.env
DEFAULT_TARGET_SECONDS = settings.FRESHNESS_TARGET_SECONDS.default
FAIL_MULTIPLE = 4
# Dagster's lower bound for either window of a time-window freshness policy.
MIN_WINDOW = timedelta(minutes=1)


def freshness_target_seconds() -> float:
    return float(settings.value(settings.FRESHNESS_TARGET_SECONDS))


def read_model_freshness_policy(target_seconds: float) -> dg.FreshnessPolicy:
    """WARN past the target, FAIL past FAIL_MULTIPLE × the target (each at least a minute)."""
    warn = max(timedelta(seconds=target_seconds), MIN_WINDOW)
    fail = max(timedelta(seconds=target_seconds * FAIL_MULTIPLE), warn + MIN_WINDOW)
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def with_read_model_freshness(spec: dg.AssetSpec, policy: dg.FreshnessPolicy) -> dg.AssetSpec:
    """The policy on read models; base tables are written by the apps, on no schedule of ours."""
    if spec.key.to_user_string() not in BY_NAME:
        return spec
    return dg.apply_freshness_policy(spec, policy)
