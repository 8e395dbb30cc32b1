"""Pipeline specs and the factory that turns them into Dagster definitions."""
