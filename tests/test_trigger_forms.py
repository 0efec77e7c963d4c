"""Every DAG's trigger form can be submitted as it opens, unless a field is meant to be filled.

Airflow 3's UI renders the params as a form and disables **Trigger** while a required field is
empty; a param is required unless its type allows null, and an empty string counts as empty. So
`Param("", type="string")` - meant as "optional, empty = default folder" - makes the DAG
impossible to trigger from the UI without typing something (seen with 4C's export_dir and 4D's
backup_dir/report_dir under `make airflow`). Optional text params must be
`Param(None, type=["null", "string"])`. (4D's approval reason is a field of its
human-in-the-loop response form, not of a trigger form.)
"""
from __future__ import annotations

import pytest


def _types(schema: dict) -> set[str]:
    t = schema.get("type")
    return set(t) if isinstance(t, list) else {t} if t else set()


@pytest.fixture(scope="module")
def bag(dag_bag):
    return dag_bag


def test_no_form_is_blocked_by_an_empty_optional_field(bag):
    blocked = []
    for dag_id, dag in sorted(bag.dags.items()):
        for name, param in dag.params.items():
            param = dag.params.get_param(name)
            if param.value == "" and "null" not in _types(param.schema):
                blocked.append(f"{dag_id}.{name}")
    assert not blocked, f"required empty strings (the UI disables Trigger): {blocked}"


def test_phase_dags_have_forms(bag):
    with_params = {d for d, dag in bag.dags.items() if dag.params}
    assert {"phase4b_data_migration", "phase4c_service_updates", "phase4d_legacy_cleanup",
            "phase4_rollback"} <= with_params
    assert "phase4d_cleanup_approval" not in bag.dags  # the approval is 4D's own HITL task now
