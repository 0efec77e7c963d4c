"""The plan file's shape: its JSON Schema (include/plans/plan.schema.json) and the one-line refusals it gives."""
