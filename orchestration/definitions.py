"""The code location: assembles what the other modules define and applies the
central policies (freshness of every read model), nothing else."""

import dagster as dg

from orchestration.assets import read_model_assets
from orchestration.automation import jobs, schedules, sensors
from orchestration.checks import all_checks
from orchestration.freshness import freshness_target_seconds, read_model_freshness_policy, with_read_model_freshness
from orchestration.observation import observe_base_tables, outside_refresh_sensor
from orchestration.resources import postgres_resource

FRESHNESS_POLICY = read_model_freshness_policy(freshness_target_seconds())

defs = dg.Definitions(
    assets=dg.map_asset_specs(
        lambda spec: with_read_model_freshness(spec, FRESHNESS_POLICY), [observe_base_tables, *read_model_assets]
    ),
    asset_checks=all_checks,
    jobs=jobs,
    schedules=schedules,
    sensors=[*sensors, outside_refresh_sensor],
    resources={"postgres": postgres_resource()},
)
