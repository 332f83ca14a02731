"""The code location: assembles what the other modules define, nothing else."""

import dagster as dg

from orchestration.assets import base_table_specs, read_model_assets
from orchestration.automation import jobs, schedules, sensors
from orchestration.checks import all_checks
from orchestration.resources import postgres_resource

defs = dg.Definitions(
    assets=[*base_table_specs, *read_model_assets],
    asset_checks=all_checks,
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    resources={"postgres": postgres_resource()},
)
