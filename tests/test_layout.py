"""The house's rules, read from the source: what may import what, and no import circles.

- ``ppa_kernel.contract`` (plan format, program, protocol, configuration, errors, the
  statistics' definitions) imports nothing else of the package;
- ``ppa_kernel.party`` (what runs at a data owner) imports only the contract and itself;
- ``ppa_kernel.analyst`` imports only the contract and itself;
- the notebook extension and the widgets build on the analyst side, never the party's.

Every import counts, including those inside functions and ``TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ppa_kernel"
SOURCES = {PACKAGE: ROOT / "ppa_kernel", f"{PACKAGE}.widgets": ROOT / "widgets"}
"""Import name -> source folder (the widgets' source is the top-level ``widgets/``)."""

ALLOWED = {
    "contract": {"contract"},
    "party": {"contract", "party"},
    "analyst": {"contract", "analyst"},
    "notebook": {"contract", "analyst", "notebook", "widgets"},
    "widgets": {"contract", "analyst", "notebook", "widgets"},
}
"""Room -> rooms it may import from (``cli`` and the package root may import any)."""


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, folder in SOURCES.items():
        if not folder.is_dir():
            continue
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join([name, *parts])
            if module.startswith(f"{PACKAGE}.widgets") and name == PACKAGE and \
                    SOURCES[f"{PACKAGE}.widgets"].is_dir():
                continue  # a stale in-package copy; the mapped folder is the source
            found[module] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported package module, line) for every import of the package in one file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return [(t, line) for t, line in out if t in MODULES]


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_the_rooms_exist():
    rooms = {_room(m) for m in MODULES}
    assert {"contract", "party", "analyst", "notebook", "widgets"} <= rooms
    assert (ROOT / "widgets" / "__init__.py").exists(), "the widgets' source is top-level"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_imports_respect_the_trust_boundary(room):
    wrong = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
             for m, edges in GRAPH.items() if _room(m) == room
             for target, line in edges
             if _room(target) not in ALLOWED[room]]
    assert not wrong, f"{room} may import only {sorted(ALLOWED[room])}:\n" + "\n".join(wrong)


def import_circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a self-import (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # the package is small: recursion depth is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or any(t == node for t, _ in graph[node]):
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_import_circles():
    circles = import_circles(GRAPH)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checker_sees_a_circle_and_a_wrong_import(tmp_path):
    """The rules above are not vacuous: a planted party -> analyst import is found."""
    planted = tmp_path / "bad.py"
    planted.write_text("from ..analyst import frame\nfrom . import bad\n")
    edges = _imports("ppa_kernel.party.bad", planted)
    assert ("ppa_kernel.analyst.frame", 1) in edges
    assert _room(edges[0][0]) not in ALLOWED["party"]
    graph = {"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("d", 1)], "e": []}
    assert sorted(import_circles(graph)) == [["a", "b", "c"], ["d"]]


CATALOG = {
    "insurer": {"age": {"kind": "numeric", "min": 18.0, "max": 90.0, "missing": False},
                "cost": {"kind": "numeric", "min": 0.0, "max": 9e4, "missing": False},
                "sex": {"kind": "categorical", "levels": ["F", "M"], "missing": False}},
    "hospital": {"app_user": {"kind": "bool", "levels": [False, True], "missing": False},
                 "days": {"kind": "numeric", "min": 0.0, "max": 720.0, "missing": False}},
    "bureau": {"band": {"kind": "categorical", "levels": ["Q1", "Q2"], "missing": False}},
}


def _one_plan_per_model() -> dict[str, dict]:
    """A plan of every registered model, built on the analyst side."""
    from ppa_kernel.analyst.frame import SecureFrame
    from ppa_kernel.contract.models import MODELS

    t = SecureFrame(CATALOG, ["bureau", "hospital", "insurer"], ["bureau", "hospital", "insurer"])
    queries = {"ttest": t.ttest("cost", by="app_user"), "chi2": t.chi2("sex", "band"),
               "corr": t.corr(["age", "cost"]), "ols": t.ols("cost ~ age + sex"),
               "logit": t.logit("app_user ~ age"), "km": t.kaplan_meier("days", "app_user"),
               "quantile": t.quantiles("cost")}
    assert set(queries) == {m.kind for m in MODELS}, "add the new model kind here"
    return {kind: q.plan() for kind, q in queries.items()}


def test_party_processes_load_no_analyst_code():
    """A kernel and a worker import the party side only, also when they compile every
    model's plan and load every runner (checked in a fresh process)."""
    code = """
import json, sys, importlib
import ppa_kernel.cli, ppa_kernel.party.kernel, ppa_kernel.party.worker
from ppa_kernel.contract.program import compile_plan
for kind, plan in json.load(sys.stdin).items():
    compile_plan(plan).openings()
    importlib.import_module(f"ppa_kernel.party.secure.models.{kind}")
bad = sorted(m for m in sys.modules if m.split(".")[:2] in (
    ["ppa_kernel", "analyst"], ["ppa_kernel", "notebook"], ["ppa_kernel", "widgets"])
    or m.split(".")[0] in ("matplotlib", "ipywidgets", "IPython"))
print(json.dumps(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(_one_plan_per_model()),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], out.stdout
