"""union: several sources into one new table; each row keeps its source table and key."""
from __future__ import annotations

from psycopg import sql

from consolidation.actions.copy import CopyAction


class UnionAction(CopyAction):
    name = "union"

    def validate(self, step, spec):
        if spec is None or spec.key != [step.provenance_table, step.provenance_key]:
            return [f"{step.label}: union target must be keyed by ({step.provenance_table}, {step.provenance_key})"]
        if not spec.source_pks.get(step.name):
            return [f"{step.label}: {step.source} has no primary key to keep as {step.provenance_key}; "
                    "give it one, or use copy into its own table"]
        return []

    def target_filter(self, step, spec, source_rows):
        return sql.SQL("{} = {}").format(sql.Identifier("t", step.provenance_table), sql.Literal(step.source))

    def undo_note(self, step, spec):
        return f"drop {spec.qualified} (created by 4A)"
