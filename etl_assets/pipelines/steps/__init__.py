"""The pipeline steps as plain functions: extract, validate, transform and load.

Each takes its inputs (the spec, a source or target, the partition and its time window, lake tables) and returns its
result; the assets of :mod:`etl_assets.pipelines.assets` call them and turn the results into Dagster outputs,
metadata and check results. Tests and benchmarks call the same functions.
"""
