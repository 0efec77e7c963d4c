"""Optional notification when the nightly validation fails: any Airflow notifier, by configuration.

The DAG's on_failure_callback is NightlyFailureNotifier(). When called, it looks for a
configured notifier class - nothing is sent, and nothing is imported, when none is:

  1. env CONSOLIDATION_NOTIFIER = dotted class path, e.g.
       airflow.providers.slack.notifications.slack.SlackNotifier
     with env CONSOLIDATION_NOTIFIER_KWARGS = JSON object of its keyword arguments, e.g.
       {"slack_conn_id": "slack", "channel": "#data", "text": "{{ consolidation_summary }}"}
  2. else the Airflow Variable `consolidation_notifier` holding
       {"class": "<dotted path>", "kwargs": {...}}

The providers (Slack, SMTP, ...) are not dependencies of this project: install the one you
name. Credentials belong in an Airflow connection the notifier refers to (slack_conn_id,
smtp_conn_id), never in these settings. Before the configured notifier runs, the callback
context gets `consolidation_summary` (the failure summary naming each table, expectation and
observed value, from the run's result.json) and `consolidation_page` (the UI path of the run's
page); the notifier's templated fields can use them as Jinja, e.g. "{{ consolidation_summary }}".
"""
from __future__ import annotations

import importlib
import json
import logging
import os

from airflow.sdk import Variable
from jinja2.sandbox import SandboxedEnvironment

from consolidation.phases.nightly import nightly_dir, safe_run

log = logging.getLogger(__name__)

ENV_CLASS = "CONSOLIDATION_NOTIFIER"
ENV_KWARGS = "CONSOLIDATION_NOTIFIER_KWARGS"
VARIABLE = "consolidation_notifier"
UI_PREFIX = "/consolidation"


class NotifierConfigError(ValueError):
    """The configured notifier cannot be built; the message names the setting and the fix."""


def configured() -> tuple[str, dict] | None:
    """(class path, kwargs) of the configured notifier, or None when none is configured."""
    path = os.environ.get(ENV_CLASS, "").strip()
    if path:
        raw = os.environ.get(ENV_KWARGS, "").strip() or "{}"
        try:
            kwargs = json.loads(raw)
        except ValueError as exc:
            raise NotifierConfigError(f"{ENV_KWARGS} is not JSON ({exc}); give a JSON object of keyword arguments") from None
        if not isinstance(kwargs, dict):
            raise NotifierConfigError(f"{ENV_KWARGS} must be a JSON object of keyword arguments, not {type(kwargs).__name__}")
        return path, kwargs
    value = _variable()
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise NotifierConfigError(f"Airflow Variable {VARIABLE} is not JSON ({exc}); "
                                  'give {"class": "<dotted path>", "kwargs": {...}}') from None
    if not isinstance(data, dict) or not data.get("class") or not isinstance(data.get("kwargs", {}), dict):
        raise NotifierConfigError(f'Airflow Variable {VARIABLE} must be {{"class": "<dotted path>", "kwargs": {{...}}}}')
    return str(data["class"]), dict(data.get("kwargs") or {})


def _variable() -> str | None:
    try:
        return Variable.get(VARIABLE, default=None)
    except Exception as exc:  # no Variable backend reachable from this process: not configured
        log.debug("Variable %s not readable here: %s", VARIABLE, exc)
        return None


def build(path: str, kwargs: dict):
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise NotifierConfigError(f"{ENV_CLASS}={path!r}: give the dotted path of a notifier class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise NotifierConfigError(f"notifier {path} cannot be imported ({exc}); install its provider "
                                  "or fix the class path") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise NotifierConfigError(f"notifier {path} does not accept these keyword arguments: {exc}") from None


def failure_summary(context) -> str:
    """The run's summary from its result.json (written by the report task), or a pointer to the logs."""
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None) or "?"
    result = nightly_dir() / safe_run(str(run_id)) / "result.json"
    try:
        return json.loads(result.read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError):
        ti = context.get("ti") or context.get("task_instance")
        task = getattr(ti, "task_id", None)
        return (f"nightly validation run {run_id} failed" + (f" in task {task}" if task else "")
                + " before a verdict was written; see the task log")


class _DagForTemplates:
    """The DAG as notifiers need it for Jinja. `dag.test()` hands DAG callbacks the serialized
    DAG, which cannot build a template environment; this stands in for it (a sandboxed
    environment, every other attribute from the DAG). Callbacks run by the DAG processor
    get the parsed DAG and never need this."""

    render_template_as_native_obj = False

    def __init__(self, dag):
        self._dag = dag

    def __getattr__(self, name):
        return getattr(self._dag, name)

    def get_template_env(self, force_sandboxed: bool = False):
        return SandboxedEnvironment(cache_size=0)


class NightlyFailureNotifier:
    """DAG on_failure_callback: calls the configured notifier, if any, with the failure summary.

    A plain callable (not itself a BaseNotifier): it only decides whether and what to send;
    the configured notifier renders its templated fields and sends.
    """

    def __call__(self, context) -> None:
        try:
            conf = configured()
        except NotifierConfigError as exc:
            log.error("nightly validation failed, and the notifier is misconfigured: %s", exc)
            raise
        if conf is None:
            log.info("nightly validation failed; no notifier configured (%s or Variable %s)", ENV_CLASS, VARIABLE)
            return
        path, kwargs = conf
        page = f"{UI_PREFIX}/validation/{safe_run(str(context.get('run_id') or ''))}"
        context = _with_message(context, failure_summary(context), page)
        notifier = build(path, kwargs)
        log.info("nightly validation failed; notifying through %s", path)
        notifier(context)


def _with_message(context, summary: str, page: str) -> dict:
    """The task context as a notifier renders it: a DAG that can template, and the message
    (`consolidation_summary`) with its link (`consolidation_page`)."""
    context = dict(context)
    dag = context.get("dag")
    if dag is not None and not hasattr(dag, "get_template_env"):
        context["dag"] = _DagForTemplates(dag)
    context["consolidation_summary"], context["consolidation_page"] = summary, page
    return context


def notify_approval_request(context, *, request_id: int, fingerprint: str, assignees: list[str], link: str) -> None:
    """A cleanup approval request opened: the configured notifier (if any) gets the summary and
    the Required Actions link as `consolidation_summary` / `consolidation_page`. A notifier that
    fails is logged, never fatal: the request is listed in Required Actions either way."""
    try:
        conf = configured()
    except NotifierConfigError as exc:
        log.error("cleanup request %s opened, and the notifier is misconfigured: %s", request_id, exc)
        return
    summary = (f"Cleanup request {request_id} (fingerprint {fingerprint[:12]}) waits for approval by "
               f"{', '.join(assignees)}: {link}")
    if conf is None:
        log.info("%s; no notifier configured (%s or Variable %s)", summary, ENV_CLASS, VARIABLE)
        return
    path, kwargs = conf
    context = _with_message(context, summary, link)
    try:
        build(path, kwargs)(context)
        log.info("cleanup request %s: notified through %s", request_id, path)
    except Exception as exc:  # a broken channel must not stop the approval from being asked
        log.error("cleanup request %s: notifier %s failed: %s", request_id, path, exc)
