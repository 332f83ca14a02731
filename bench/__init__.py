"""Benchmark of the per-version refresh (`table` strategy) against the seed's
materialized views (`matview` strategy): `python -m bench --sizes S,M`."""
