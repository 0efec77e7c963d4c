"""The task bodies of every DAG in dags/: one call into consolidation.api each, through
@task_body (plan, run, params and connection from the Airflow context; the outcome's lines
printed, its failure raised, its value returned for XCom)."""
from __future__ import annotations

from consolidation import api
from consolidation.airflow.runtime import TaskRun, task_body


# ------------------------------------------------------------------ the run lease (first and last task)
@task_body
def acquire_lease(t: TaskRun) -> api.Outcome:
    """The database's lease for this run (refused, naming the holder, while another run has it)."""
    return api.lease_acquire(t.conn, t.plan, api.LEASED_DAGS[t.info.dag_id], dag=t.info.dag_id, via="ui",
                             cancel_pending_cleanup=bool(t.params.get("cancel_pending_cleanup")), **t.run)


@task_body
def release_lease(t: TaskRun) -> api.Outcome:
    """Give the lease back (trigger_rule all_done: also after a failed task; only this run's)."""
    return api.lease_release(t.conn, t.plan, run_id=t.info.run_id)


# ------------------------------------------------------------------ 4A, 4B, 4C and the gates
@task_body
def inventory(t: TaskRun) -> api.Outcome:
    return api.inventory(t.conn, t.plan)


@task_body
def require_gate(t: TaskRun, phase: str) -> api.Outcome:
    return api.require_gate(t.conn, t.plan, phase)


@task_body
def prepare_4a(t: TaskRun) -> api.Outcome:
    return api.extend_prepare(t.conn, t.plan, **t.run)


@task_body
def extend_group(t: TaskRun, legacy_schema: str) -> api.Outcome:
    return api.extend_group(t.conn, t.plan, legacy_schema, **t.run)


@task_body
def finalize_4a(t: TaskRun) -> api.Outcome:
    return api.extend_finalize(t.conn, t.plan, **t.run)


@task_body
def run_step(t: TaskRun, step_name: str) -> api.Outcome:
    return api.run_step(t.conn, t.plan, step_name, dry_run=bool(t.params.get("dry_run")), **t.run)


# a big step (batch_rows) as mapped tasks over key ranges: plan, one task per range, finish
@task_body
def plan_ranges(t: TaskRun, step_name: str) -> api.Outcome:
    return api.plan_ranges(t.conn, t.plan, step_name, dry_run=bool(t.params.get("dry_run")), **t.run)


@task_body
def run_range(t: TaskRun, step_name: str, key_range: dict) -> api.Outcome:
    return api.run_range(t.conn, t.plan, step_name, key_range, dry_run=bool(t.params.get("dry_run")), **t.run)


@task_body
def finish_ranges(t: TaskRun, step_name: str, key_ranges: list) -> api.Outcome:
    return api.finish_ranges(t.conn, t.plan, step_name, list(key_ranges), dry_run=bool(t.params.get("dry_run")),
                             **t.run)


@task_body
def prepare_registry(t: TaskRun) -> api.Outcome:
    return api.registry_prepare(t.conn, t.plan)


@task_body
def register_group(t: TaskRun, legacy_schema: str) -> api.Outcome:
    return api.register_group(t.conn, t.plan, legacy_schema, **t.run)


@task_body
def export_registry(t: TaskRun) -> api.Outcome:
    return api.registry_export(t.conn, t.plan, t.params.get("export_dir"), **t.run)


@task_body
def gate(t: TaskRun, phase: str) -> api.Outcome:
    return api.gate(t.conn, t.dsn, t.plan, phase, **t.run)


# ------------------------------------------------------------------ 4D and its approval
@task_body
def preflight(t: TaskRun) -> api.Outcome:
    return api.cleanup_preflight(t.conn, t.dsn, t.plan, resync_late_rows=bool(t.params.get("resync_late_rows")),
                                 **t.run)


@task_body
def open_request(t: TaskRun) -> api.Outcome:
    return api.cleanup_open_request(t.conn, t.plan, **t.run)


@task_body
def backup(t: TaskRun) -> api.Outcome:
    return api.cleanup_backup(t.conn, t.dsn, t.plan, t.xcom("open_request"), decision=t.xcom("wait_for_approval"),
                              folder=t.params.get("backup_dir"), **t.run)


@task_body
def drop(t: TaskRun, schema: str) -> api.Outcome:
    return api.cleanup_drop(t.conn, t.dsn, t.plan, schema, t.xcom("open_request"),
                            decision=t.xcom("wait_for_approval"), **t.run)


@task_body
def report(t: TaskRun) -> api.Outcome:
    return api.report(t.conn, t.plan, folder=t.params.get("report_dir"), **t.run)


# ------------------------------------------------------------------ rollback
@task_body
def assess(t: TaskRun) -> api.Outcome:
    return api.rollback_assess(t.conn, t.plan)


@task_body
def restore_legacy(t: TaskRun) -> api.Outcome:
    return api.rollback_restore(t.dsn, t.plan, **t.run)


@task_body
def undo_migration(t: TaskRun) -> api.Outcome:
    return api.rollback_undo(t.conn, t.plan, restore_only=bool(t.params.get("restore_only")), **t.run)


# ------------------------------------------------------------------ nightly validation
@task_body
def nightly_prepare(t: TaskRun) -> api.Outcome:
    return api.nightly_prepare(t.conn, t.plan)


@task_body
def validate_schema(t: TaskRun, schema: str) -> api.Outcome:
    return api.nightly_validate_schema(t.conn, t.dsn, t.plan, schema, **t.run)


@task_body
def nightly_report(t: TaskRun) -> api.Outcome:
    return api.nightly_report(t.conn, t.plan, **t.run)
