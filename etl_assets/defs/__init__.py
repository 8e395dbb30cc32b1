"""The project's defs folder: one sub-folder per domain, each with a ``defs.yaml`` of Pipeline components."""
