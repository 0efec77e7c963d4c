"""Schema consolidation engine: plan, inventory, steps, gates, ledger, approvals.

Usable without a scheduler; the DAGs in dags/ only wire these functions into tasks.
Importing this package touches no database and imports nothing heavy.
"""
