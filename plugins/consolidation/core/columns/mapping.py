"""A step's `columns:` entries, read from the plan (no database needed).

A target column is filled by one of:

    target: source_column                          the source column (renamed)
    target: {from: col, cast: T, default: V}       cast, and V where the value is NULL
    target: {expr: "SQL over s"}                   one scalar SQL expression over the source row `s`
    target: {from: col, map: {old: new}, else: V}  translated values (no else: unmapped values kept)
    target: {value: V}                             a constant
    target: {default: V}                           only V (no source column)

`cast` and `default` combine with every form. One source column may feed any number of
target columns. Nothing is dropped: every entry becomes a ColumnMap, or the plan is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from consolidation.core.errors import PlanError

KEYS = ("from", "cast", "default", "expr", "map", "else", "value")
_NOT_SET = object()
# A reference to a column of the source row: s.col or s."Col" (the expression's only alias).
_REF = re.compile(r'(?<![\w."])s\s*\.\s*("(?:[^"]|"")+"|[A-Za-z_][\w$]*)')


@dataclass(frozen=True)
class ColumnMap:
    """How one target column is filled (see the module doc); `kind` names the form."""

    target: str
    source: str | None  # `from`
    cast: str | None = None
    default: Any = None
    expr: str | None = None
    value: Any = _NOT_SET
    map: tuple[tuple[str | None, Any], ...] | None = None  # (old as text, or None for NULL; new)
    otherwise: Any = _NOT_SET  # `else`

    @property
    def kind(self) -> str:
        if self.expr is not None:
            return "map" if self.map is not None else "expr"
        if self.map is not None:
            return "map"
        if self.has_value:
            return "value"
        if self.source is not None:
            return "cast" if self.cast else "column"
        return "default"

    @property
    def has_value(self) -> bool:
        return self.value is not _NOT_SET

    @property
    def has_else(self) -> bool:
        return self.otherwise is not _NOT_SET

    @property
    def plain(self) -> bool:
        """The source column's value as it is (renamed, maybe cast or defaulted): it can carry
        the column's identity (keys, foreign keys, constraints); a computed value cannot."""
        return self.kind in ("column", "cast")

    def referenced_columns(self) -> set[str]:
        """Source columns this mapping reads (from `from`, and every s.<col> of `expr`)."""
        refs = {self.source} if self.source else set()
        if self.expr:
            for name in _REF.findall(_strip_literals(self.expr)):
                refs.add(name[1:-1].replace('""', '"') if name.startswith('"') else name.lower())
        return refs

    def describe(self) -> str:
        """The mapping in the plan's words, for messages and the SQL preview."""
        if self.expr is not None:
            text = f"expr {self.expr}"
        elif self.has_value:
            text = f"value {self.value!r}"
        elif self.source is not None:
            text = f"from {self.source}"
        else:
            text = "no source"
        if self.map is not None:
            text += " mapped " + ", ".join(f"{'NULL' if k is None else k} -> {v}" for k, v in self.map)
            text += f", else {self.otherwise!r}" if self.has_else else ", others kept"
        if self.cast:
            text += f" cast {self.cast}"
        if self.default is not None:
            text += f" default {self.default!r}"
        return text


def parse_columns(raw: Any, label: str) -> dict[str, ColumnMap]:
    """The step's `columns:` as {target column: ColumnMap}; a PlanError naming the entry otherwise."""
    if not isinstance(raw, dict):
        raise PlanError(f"{label}: `columns` maps target columns to a source column or to "
                        "{from, cast, default} / {expr} / {from, map, else} / {value}")
    return {str(target): parse_one(str(target), spec, label) for target, spec in raw.items()}


def parse_one(target: str, spec: Any, label: str) -> ColumnMap:
    where = f"{label}: column {target}"
    if isinstance(spec, str) and spec:
        return ColumnMap(target, spec)
    if not isinstance(spec, dict):
        raise PlanError(f"{where}: give a source column name, or one of {{from: col}}, {{expr: SQL}}, "
                        "{from: col, map: {old: new}}, {value: constant}")
    yaml_trap(spec, where)
    unknown = sorted(set(map(str, spec)) - set(KEYS))
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    sources = [k for k in ("from", "expr", "value") if k in spec]
    if len(sources) > 1:
        raise PlanError(f"{where}: give one of `from`, `expr` or `value`, not {' and '.join(sources)}")
    if not sources and "default" not in spec:
        raise PlanError(f"{where}: needs `from` (a source column), `expr`, `value` or `default`")
    for key in ("from", "expr", "cast"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key].strip()):
            raise PlanError(f"{where}: `{key}` must be a non-empty string")
    for key in ("value", "default", "else"):
        if key in spec:
            _constant(spec[key], f"{where}: `{key}`")
    if "else" in spec and "map" not in spec:
        raise PlanError(f"{where}: `else` belongs to a `map`; add the map or remove `else`")
    mapping = None
    if "map" in spec:
        if "value" in spec:
            raise PlanError(f"{where}: a `map` translates `from` or `expr`, not a constant `value`")
        if not sources:
            raise PlanError(f"{where}: a `map` needs `from` (the source column whose values it translates)")
        mapping = _map(spec["map"], where)
    return ColumnMap(
        target, spec.get("from"), spec.get("cast"), spec.get("default"), spec.get("expr"),
        spec["value"] if "value" in spec else _NOT_SET, mapping,
        spec["else"] if "else" in spec else _NOT_SET)


def yaml_trap(spec: dict, where: str) -> None:
    """`{cast: numeric(8,4)}` unquoted: YAML splits it at the comma into `cast: numeric(8` and a
    key `4)`. Say so, rather than "unknown key 4)"."""
    for key, value in spec.items():
        if isinstance(value, str) and "(" in value and ")" not in value:
            stray = [k for k in spec if isinstance(k, (str, int)) and str(k).rstrip().endswith(")")]
            if stray:
                whole = f"{value},{stray[0]}"
                raise PlanError(f"{where}: `{key}: {whole}` must be quoted, e.g. {key}: '{whole}' - YAML reads the "
                                "comma inside {...} as the end of the entry")


def _map(raw: Any, where: str) -> tuple[tuple[str | None, Any], ...]:
    if not isinstance(raw, dict) or not raw:
        raise PlanError(f"{where}: `map` maps old values to new ones, e.g. map: {{new: pending, done: final}}")
    out = []
    for old, new in raw.items():
        if isinstance(old, bool):
            raise PlanError(f"{where}: map key {old!r}: YAML reads yes/no/on/off/true/false as booleans; quote the "
                            "value as the source holds it, e.g. 'yes': ...")
        _constant(new, f"{where}: map value for {old!r}")
        out.append((None if old is None else str(old), new))
    return tuple(out)


def _constant(value: Any, where: str) -> None:
    if isinstance(value, (dict, list)):
        raise PlanError(f"{where} must be a single value (text, number, boolean or null), not {type(value).__name__}")


def _strip_literals(text: str) -> str:
    """The expression without its string literals, so 's.x' inside quotes is no reference."""
    return re.sub(r"'(?:[^']|'')*'", "''", text)
