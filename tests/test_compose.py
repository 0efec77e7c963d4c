"""docker-compose.yaml, checked without Docker (this machine has no daemon).

1. It validates against the Compose Specification JSON schema (tests/data/compose-spec.json,
   vendored from the check-jsonschema wheel on PyPI; see tests/data/README.md).
2. Semantic checks a schema cannot make: every service built from the x-airflow-common anchor
   runs the CeleryExecutor and mounts dags/, plugins/ and include/; the consolidation_db
   connection reaches the target-db service; depends_on names existing services, has no cycle,
   and waits only for what can satisfy its condition; the target database's password is never a
   literal outside an environment-substitution default; the image is the Airflow that
   requirements.txt pins.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator

from conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init"}
ALL_SERVICES = AIRFLOW_SERVICES | {"redis", "postgres", "target-db", "target-db-seed"}
MOUNTS = {"./dags": "/opt/airflow/dags", "./plugins": "/opt/airflow/plugins", "./include": "/opt/airflow/include"}


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(text) -> dict:
    return yaml.safe_load(text)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} (defaults may nest) and $$, with `env`."""
    env = env or {}
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if value.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= value[j] == "}"
                j += 1
            body = value[i + 2:j - 1]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?", body, re.S)
            assert m, f"unsupported substitution ${{{body}}}"
            name, op, default = m.groups()
            if name in env and (env[name] or op != ":-"):
                out.append(env[name])
            else:
                out.append(interpolate(default or "", env))
            i = j
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def services_merging_common(text: str) -> set[str]:
    """Services whose mapping has `<<: *airflow-common` (the node graph keeps anchors as shared nodes)."""
    root = yaml.compose(text)
    top = {k.value: v for k, v in root.value}
    common = top["x-airflow-common"]
    merged = set()
    for key, node in top["services"].value:
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge" and (v is common or common in getattr(v, "value", [])):
                merged.add(key.value)
    return merged


def test_validates_against_the_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file(compose):
    """The vendored schema does reject what Compose rejects (so a pass above means something)."""
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["airflow-worker"]["depends_on"] = {"redis": {"condition": "service_ready"}}
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")  # a typo
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("service_ready" in m for m in messages)
    assert any("healthchek" in m for m in messages)


def test_services_and_the_common_anchor(compose, text):
    services = compose["services"]
    assert ALL_SERVICES <= set(services)
    assert services_merging_common(text) == AIRFLOW_SERVICES | {"target-db-seed"}
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                        "airflow-worker": "celery worker"}
    for name in services_merging_common(text):
        svc = services[name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert urlsplit(interpolate(env["AIRFLOW__CELERY__RESULT_BACKEND"])).hostname == "postgres"
        mounts = dict(v.split(":")[:2] for v in svc["volumes"])
        for host, container in MOUNTS.items():
            assert mounts.get(host) == container, (name, host)
            assert (REPO_ROOT / host).is_dir()
        assert "AIRFLOW_CONN_CONSOLIDATION_DB" in env, name
        assert svc.get("build") == "." and svc["image"]


def test_connection_reaches_the_target_db_and_the_environment_can_override_it(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    raw = env["AIRFLOW_CONN_CONSOLIDATION_DB"]
    default = urlsplit(interpolate(raw))
    target = compose["services"]["target-db"]["environment"]
    assert (default.scheme, default.hostname, default.port, default.path) == ("postgresql", "target-db", 5432,
                                                                               "/" + target["POSTGRES_DB"])
    assert default.username == target["POSTGRES_USER"]
    assert default.password == interpolate(target["POSTGRES_PASSWORD"])
    assert interpolate(raw, {"TARGET_DB_PASSWORD": "s3cret"}).startswith("postgresql://consolidation:s3cret@")
    mine = "postgresql://me:pw@db.example:5432/prod"
    assert interpolate(raw, {"AIRFLOW_CONN_CONSOLIDATION_DB": mine}) == mine
    seed = compose["services"]["target-db-seed"]
    assert seed["command"][:3] == ["python", "-m", "consolidation"] and "--if-empty" in seed["command"]
    assert interpolate(seed["environment"]["CONSOLIDATION_DB_URL"]) == interpolate(raw)


def test_depends_on_graph(compose):
    services = compose["services"]
    graph = {name: dict(svc.get("depends_on") or {}) for name, svc in services.items()}
    for name, deps in graph.items():
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is waited for to finish, yet restarts"
    # no cycle (Kahn)
    remaining = {n: set(d) for n, d in graph.items()}
    while remaining:
        ready = [n for n, d in remaining.items() if not d]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for n in ready:
            del remaining[n]
        for d in remaining.values():
            d.difference_update(ready)
    # the order that matters
    assert graph["target-db-seed"] == {"target-db": {"condition": "service_healthy"}}
    assert graph["airflow-worker"]["target-db-seed"]["condition"] == "service_completed_successfully"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert graph[name]["airflow-init"]["condition"] == "service_completed_successfully"
        assert {"redis", "postgres"} <= set(graph[name])


def test_no_literal_password_for_the_target_db(compose, text):
    target = compose["services"]["target-db"]["environment"]
    assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", target["POSTGRES_PASSWORD"]), target["POSTGRES_PASSWORD"]
    # every URL naming target-db carries its password as ${VAR:-default} or nothing
    urls = re.findall(r"[a-z+]+://([^@\s]*)@target-db", text)
    assert urls
    for auth in urls:
        user, _, password = auth.partition(":")
        assert not password or re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", password), auth
    assert "PGPASSWORD" not in text


def test_image_is_the_pinned_airflow():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    pinned = re.search(r"^apache-airflow==(\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert base == f"apache/airflow:{pinned}-python3.11"
    assert "requirements.txt" in dockerfile
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*"):] == ["*", "!requirements.txt"], "the build context must not ship .venv/.state"


def test_interpolation_helper():
    assert interpolate("${A:-x}") == "x"
    assert interpolate("${A:-${B:-y}}z") == "yz"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("$${HOSTNAME}") == "${HOSTNAME}"
