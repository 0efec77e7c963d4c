"""The plan's `objects:` list: what happens to a legacy schema's objects that are not tables moved
by a step - functions, procedures, types, triggers and leftover relations.

Each entry names one object and says `recreate: <consolidated schema>` (a function, procedure or
type: 4A creates a copy there; the legacy original goes with its schema in 4D) or `drop: <reason>`
(it goes with its schema in 4D, after the backup; a trigger given `drop:` is not carried to its
table's target). Names are `schema.name` (every overload of a function of that name), or
`schema.table.trigger` for a trigger. A trigger of a copied table needs no entry: it is carried to
the target with its function (checks.legacy_objects says what the plan decides for each object).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consolidation.core.errors import PlanError

KEYS = ("name", "recreate", "drop")


@dataclass(frozen=True)
class PlannedObject:
    index: int  # 0-based, as editors count (objects[0])
    schema: str
    name: str  # the object's name; for a trigger `table.trigger`
    recreate: str | None = None
    drop: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_trigger(self) -> bool:
        return "." in self.name

    @property
    def label(self) -> str:
        return f"objects[{self.index}] ({self.qualified})"


def parse_objects(raw: Any, consolidated, legacy, step_sources: dict[str, int]) -> list[PlannedObject]:
    """The entries of `objects:`, each checked: a legacy schema's object, exactly one of
    `recreate` (a consolidated schema) or `drop` (a reason), listed once, not a step's table."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PlanError("`objects` must be a list of {name: schema.object, recreate: schema} "
                        "or {name: schema.object, drop: reason}")
    out: list[PlannedObject] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        label = f"objects[{i}]"
        if not isinstance(entry, dict):
            raise PlanError(f"{label}: write {{name: schema.object, recreate: schema}} or {{name: ..., drop: reason}}")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise PlanError(f"{label}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(KEYS)}")
        name = entry.get("name")
        parts = str(name or "").split(".")
        if not isinstance(name, str) or len(parts) not in (2, 3) or not all(parts):
            raise PlanError(f"{label}: name {name!r} must be schema.object (schema.table.trigger for a trigger)")
        label = f"objects[{i}] ({name})"
        if parts[0] not in legacy:
            raise PlanError(f"{label}: {parts[0]!r} is not a legacy schema; objects lists what is in "
                            f"one of {', '.join(sorted(legacy))}")
        has_recreate, has_drop = entry.get("recreate") is not None, entry.get("drop") is not None
        if has_recreate == has_drop:
            raise PlanError(f"{label}: give exactly one of `recreate: <consolidated schema>` or `drop: <reason>`")
        if has_recreate and entry["recreate"] not in consolidated:
            raise PlanError(f"{label}: recreate {entry['recreate']!r} is not a consolidated schema; "
                            f"use one of {', '.join(sorted(consolidated))}")
        if has_drop and not str(entry["drop"]).strip():
            raise PlanError(f"{label}: `drop` needs the reason, as text")
        if name in seen:
            raise PlanError(f"{label}: already listed as objects[{seen[name]}]; list each object once")
        if name in step_sources:
            raise PlanError(f"{label}: {name} is step {step_sources[name]}'s table; a table moves by its step "
                            "(remove it from objects, or the step and use `drop`)")
        seen[name] = i
        out.append(PlannedObject(i, parts[0], ".".join(parts[1:]),
                                 recreate=str(entry["recreate"]) if has_recreate else None,
                                 drop=str(entry["drop"]).strip() if has_drop else None))
    return out
