"""Plan files are read strictly: duplicate keys, alias bombs, deep nesting and huge files are refused."""
from __future__ import annotations

import time

import pytest

from consolidation.core import strict_yaml
from consolidation.core.plan import PlanError, load_plan
from consolidation.core.strict_yaml import YamlRefused

pytestmark = pytest.mark.unit


def test_plain_yaml_loads_as_safe_load_would():
    text = "a: 1\nb: [x, {c: true}]\nd: &d {e: 2}\nf: *d\n"
    assert strict_yaml.load(text) == {"a": 1, "b": ["x", {"c": True}], "d": {"e": 2}, "f": {"e": 2}}


def test_duplicate_key_is_refused_with_both_lines():
    with pytest.raises(YamlRefused, match=r"line 3: duplicate key 'steps' \(first at line 1\)"):
        strict_yaml.load("steps: [1]\nplan: x\nsteps: [2]\n")


def test_duplicate_key_inside_a_step_is_refused():
    with pytest.raises(YamlRefused, match="duplicate key 'target'"):
        strict_yaml.load("steps:\n  - source: a.b\n    target: c.d\n    target: e.f\n")


def test_billion_laughs_is_refused_quickly():
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    started = time.monotonic()
    with pytest.raises(YamlRefused, match="expands to more than"):
        strict_yaml.load("\n".join(lines))
    assert time.monotonic() - started < 5  # refused, not expanded


def test_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(YamlRefused, match="alias refers to the value that contains it"):
        strict_yaml.load("a: &x [1, *x]\n")
    with pytest.raises(YamlRefused, match="nested more than"):
        strict_yaml.load("a: " + "[" * 5000 + "]" * 5000)
    # deep enough to overflow the C stack of libyaml's composer, were it not checked first
    with pytest.raises(YamlRefused, match="line 1: nested more than"):
        strict_yaml.load("[" * 300_000 + "]" * 300_000)
    with pytest.raises(YamlRefused, match="nested more than"):
        strict_yaml.load("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)) + "  " * 60 + "x: 1\n")


def test_oversized_file_is_refused(tmp_path):
    with pytest.raises(YamlRefused, match="over the limit"):
        strict_yaml.load("#" * (strict_yaml.MAX_BYTES + 1))


def test_plan_file_with_a_second_steps_key_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("plan: p\nconsolidated_schemas: [a]\nlegacy_schemas: [b]\nsteps:\n"
                    "  - {source: b.t, action: delete}\nsteps:\n  - {source: b.u, action: delete}\n")
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and "duplicate key 'steps'" in str(err.value)
