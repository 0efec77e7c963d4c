"""The engine's layers import only downward, with no cycles, in modules of a readable size.

Layers, lowest first (README "Layout"): core, actions, checks, phases, api, then dev and
airflow (neither imports the other), then cli. Read from the source with ast: nothing is
imported or run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[1] / "plugins" / "consolidation"
RANK = {"core": 0, "actions": 1, "checks": 2, "phases": 3, "api": 4, "dev": 5, "airflow": 5, "cli": 6}
MAX_LINES = 600
MAX_MODULES_PER_FOLDER = 12


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Engine modules imported by `path` (absolute imports; the engine uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("consolidation"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("consolidation"))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use absolute imports (consolidation.<layer>.<module>)")
    return {m for m in found if m in modules}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_layers_import_only_downward():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        mine = _layer(name)
        for dep in _imports(path, modules):
            theirs = _layer(dep)
            if mine is None or theirs is None or mine == theirs:
                continue
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine]):
                wrong.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own modules is not a cycle of code
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".") or d.count(".") < 1}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_modules_and_folders_stay_small():
    modules = _modules()
    long = [f"{p.relative_to(PKG)}: {n} lines" for p in modules.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
    crowded = []
    for folder in [PKG, *[p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()]]:
        count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        if count > MAX_MODULES_PER_FOLDER:
            crowded.append(f"{folder.relative_to(PKG.parent)}: {count} modules")
    assert not crowded, "folders over the limit:\n" + "\n".join(crowded)


# Engine exceptions that are not refusals themselves, and where each becomes one (or why not)
NOT_REFUSALS = {
    "consolidation.phases.archives.clients.NoClient": "backup.client_for raises it as BackupFailed",
    "consolidation.core.strict_yaml.YamlRefused": "the plan loader raises it as PlanError",
    "consolidation.airflow.notify.NotifierConfigError": "a notifier's settings, read outside any task body",
    "consolidation.airflow.runtime.TaskRefused": "what a refusal becomes in a task (a SystemExit)",
    "consolidation.api.approval.AirflowApiError": "Airflow's HTTP answer, turned into the CLI's message",
    "consolidation.phases.registry.NotRegistered": "a LookupError for services calling registry.resolve; "
                                                   "4C's smoke checks record it as the check's failure",
}


def test_every_engine_exception_is_a_refusal_a_plan_error_or_named_here():
    """A task ends with a refusal's message and no traceback only for core.errors.Refusal (and
    PlanError): an exception class of the engine that is neither would leave a user a traceback
    for bad input, so each new one must be one of them or say here why not. dev/ and cli/ are
    the developer's tools and the command line, which print their own errors."""
    import importlib

    from consolidation.core.errors import PlanError, Refusal

    found = {}
    for name in _modules():
        if name.split(".")[1:2] in (["dev"], ["cli"]):
            continue
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name
                    and not attr.startswith("_")):
                found[f"{name}.{attr}"] = obj
    assert len(found) > 15, sorted(found)
    strays = sorted(n for n, cls in found.items() if not issubclass(cls, (Refusal, PlanError)) and n not in NOT_REFUSALS)
    assert strays == [], f"make these subclasses of core.errors.Refusal, or name them in NOT_REFUSALS: {strays}"
    assert sorted(set(NOT_REFUSALS) - set(found)) == []
