"""The engine's operations, one plain function each (like alembic's `command` module): what
the Airflow task bodies (consolidation.airflow.tasks) and the command line (consolidation.cli)
both call.

Each takes explicit inputs - the plan, an open connection and/or a DSN, the run id, the
user, options - and returns an Outcome: a small value (a task's XCom), the lines to print,
and a failure found after them (a task raises it, the CLI exits non-zero). Errors the engine
raises on the way (a refused phase, a failed gate, a blocked cleanup) propagate unchanged.
Nothing here imports Airflow; connections are committed by the operations that write.
"""
from consolidation.api.cleanup import (APPROVE_HOW, approval_state, cleanup_backup, cleanup_drop,
                                       cleanup_open_request, cleanup_preflight, decided_line,
                                       expire_request, report, report_data, rollback_assess, rollback_restore,
                                       rollback_undo, status)
from consolidation.api.approval import (AirflowApiError, airflow_token, approval_assignees, approval_body,
                                        approval_response, drop_sql_preview, pending_approvals, respond,
                                        rollback_sql_preview, verify_decision)
from consolidation.api.backups import restore_backup
from consolidation.api.nightly import (accept_drop, nightly_prepare, nightly_report, nightly_validate_schema,
                                       render_table, validate)
from consolidation.api.outcome import Outcome
from consolidation.api.phases import (extend_finalize, extend_group, extend_prepare, finish_ranges, gate, inventory,
                                      plan_ranges, plan_summary, require_gate, run_range, run_step, sql_preview,
                                      step_graph)
from consolidation.api.runs import (LEASED_DAGS, interrupted_entries, lease_acquire, lease_holder, lease_release,
                                    lease_release_by_hand, lease_renew, sweep_interrupted)
from consolidation.api.registry import (register_group, registry_export, registry_prepare, registry_resolve,
                                        registry_show, registry_smoke)

__all__ = [
    "Outcome",
    # 4A, 4B, the gates
    "inventory", "plan_summary", "sql_preview", "require_gate", "extend_prepare", "extend_group",
    "extend_finalize", "step_graph", "run_step", "plan_ranges", "run_range", "finish_ranges", "gate",
    # 4C and the registry
    "registry_prepare", "register_group", "registry_export", "registry_show", "registry_resolve", "registry_smoke",
    # 4D, decisions, report, rollback
    "cleanup_preflight", "cleanup_open_request", "cleanup_backup", "cleanup_drop", "report", "report_data",
    "decided_line", "approval_state", "expire_request", "status", "APPROVE_HOW",
    "rollback_assess", "restore_backup",
    # the 4D approval through Airflow's human-in-the-loop, and the previews of what it destroys
    "approval_assignees", "approval_body", "approval_response", "verify_decision", "drop_sql_preview",
    "rollback_sql_preview", "airflow_token", "pending_approvals", "respond", "AirflowApiError", "rollback_restore", "rollback_undo",
    # runs: the lease, interruptions
    "LEASED_DAGS", "lease_acquire", "lease_renew", "lease_release", "lease_holder", "lease_release_by_hand",
    "sweep_interrupted",
    "interrupted_entries",
    # nightly
    "nightly_prepare", "nightly_validate_schema", "nightly_report", "validate", "accept_drop", "render_table",
]
