"""Schema consolidation engine: plan, inventory, steps, gates, ledger, approvals.

Usable without a scheduler; the DAGs in dags/ only wire these functions into tasks.
Importing this package touches no database and imports nothing heavy (psycopg's sql
module, PyYAML). It registers the step actions (consolidation.actions) with the plan
parser in core.plan, which cannot import them itself (core is the lowest layer).
"""
from consolidation import actions as _actions  # noqa: F401  (registers copy, merge, union, delete, recreate_view)
