"""The 4B step graph: which steps each plan step waits for, kept in a file beside the plan's
other state, so the 4B DAG can run independent steps at once without reading the database.

A DAG file may not touch the database, and the order of the steps comes from the catalog
(phases.migrate.order_steps: the steps filling the tables a target's foreign keys point at,
earlier steps into the same target, a recreated view's tables). So 4A's finalize - the
moment every target exists - writes that graph to

    $CONSOLIDATION_STATE_DIR/plans/<plan sha256>.graph.json

(atomically: core.files.atomic_write), and `consolidation plan --graph` writes it again
from the catalog where 4A ran elsewhere. The file is keyed by the plan's sha256: a changed
plan finds no graph, and the 4B DAG falls back to its steps one after another in plan
order, saying so in its docs. `read` is what the DAG calls at parse time: one JSON read,
no database, never raising (a file it cannot use is the fallback, with the reason).

CONSOLIDATION_4B_PARALLEL (default 2) is how many 4B tasks may run at once (the DAG's
max_active_tasks), so a small database server is not flooded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from consolidation.core import config
from consolidation.core.files import atomic_write
from consolidation.core.plan import Plan

VERSION = 1
PARALLEL_VARIABLE = "CONSOLIDATION_4B_PARALLEL"
DEFAULT_PARALLEL = 2


@dataclass
class StepGraph:
    plan_sha256: str
    upstream: dict[str, list[str]]  # step -> the steps it waits for (acyclic)
    targets: dict[str, str] = field(default_factory=dict)  # step -> its target
    order: list[str] = field(default_factory=list)  # an order the steps can run in (execution_order)
    written_at: str = ""
    written_by: str = ""
    path: Path | None = None

    def edges(self) -> int:
        return sum(len(v) for v in self.upstream.values())

    def widest(self) -> int:
        """Steps in the largest round of steps that may run at once (each after its upstream)."""
        level: dict[str, int] = {}
        for name in self.order:
            level[name] = 1 + max((level[u] for u in self.upstream.get(name, [])), default=0)
        counts: dict[int, int] = {}
        for n in level.values():
            counts[n] = counts.get(n, 0) + 1
        return max(counts.values(), default=0)


def _state_dir() -> Path:
    # config.state_dir() without creating it: a DAG parse only reads
    return Path(os.environ.get("CONSOLIDATION_STATE_DIR", config.REPO_ROOT / ".state"))


def path_for(plan: Plan) -> Path:
    return _state_dir() / "plans" / f"{plan.sha256}.graph.json"


def write(plan: Plan, upstream: dict[str, list[str]], targets: dict[str, str], order: list[str], *,
          written_by: str) -> Path:
    """The graph for `plan`, written whole or not at all; returns its path."""
    path = path_for(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": VERSION, "plan": plan.name, "plan_sha256": plan.sha256,
           "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "written_by": written_by,
           "order": order,
           "steps": {name: {"target": targets.get(name), "upstream": sorted(upstream.get(name, []))}
                     for name in order}}
    return atomic_write(path, json.dumps(doc, indent=2) + "\n")


def read(plan: Plan, steps: list[str] | None = None) -> tuple[StepGraph | None, str]:
    """(the graph, "") when a usable graph for this very plan exists; else (None, why not).
    `steps`: the step names the caller schedules (default: the plan's migrating steps); the
    graph must name each of them. Never raises: the caller falls back to plan order."""
    names = steps if steps is not None else [s.name for s in plan.migrating_steps()]
    path = path_for(plan)
    if not path.is_file():
        return None, (f"no step graph for this plan (sha256 {plan.sha256[:12]}) at {path}: "
                      "4A writes it when it finalizes (or `consolidation plan --graph`)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != VERSION or doc.get("plan_sha256") != plan.sha256:
            return None, f"{path} is not a version-{VERSION} step graph of this plan; write it again"
        upstream = {name: list(entry["upstream"]) for name, entry in doc["steps"].items()}
        targets = {name: entry.get("target") for name, entry in doc["steps"].items()}
        order = list(doc["order"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{path} cannot be read ({type(exc).__name__}: {exc}); write it again"
    missing = [n for n in names if n not in upstream]
    unknown = sorted({u for ups in upstream.values() for u in ups} - set(upstream))
    if missing or unknown or sorted(order) != sorted(upstream):
        return None, (f"{path} does not match the plan's steps (missing {missing[:3]}, unknown {unknown[:3]}); "
                      "write it again")
    position = {name: i for i, name in enumerate(order)}
    if any(position[u] >= position[name] for name, ups in upstream.items() for u in ups):
        return None, f"{path}: a step waits for a step after it (a cycle); write it again"
    return StepGraph(doc["plan_sha256"], upstream, targets, order, doc.get("written_at", ""),
                     doc.get("written_by", ""), path), ""


def parallel() -> int:
    """CONSOLIDATION_4B_PARALLEL: how many 4B tasks may run at once (default 2); ValueError naming
    the variable when it is not a whole number of at least 1."""
    raw = os.environ.get(PARALLEL_VARIABLE)
    if not raw:
        return DEFAULT_PARALLEL
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{PARALLEL_VARIABLE}={raw!r} is not a whole number of at least 1; "
                         f"unset it (default {DEFAULT_PARALLEL}) or set e.g. 2")
    return value
