"""One adapter module (``party/secure/runtime.py``) is the only code that touches MPyC.

Static checks on the package source: no other module imports ``mpyc``, and none reaches
into MPyC's private names (``mpc._x``, ``thresha._x``, ...), so an MPyC upgrade is
confined to the adapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ppa_kernel"
ADAPTER = PACKAGE / "party" / "secure" / "runtime.py"
MPYC_OWNERS = {"mpc", "thresha", "asyncoro", "runtime"}
"""Names that, outside the adapter, refer to MPyC objects by convention."""


def _modules() -> list[Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert ADAPTER in paths
    return paths


def _is_mpyc(module: str | None) -> bool:
    return module is not None and (module == "mpyc" or module.startswith("mpyc."))


def _mpyc_imports(tree: ast.AST) -> list[tuple[int, str, set[str]]]:
    """(line, statement, names it binds) for every import of ``mpyc``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_mpyc(alias.name):
                    bound = alias.asname or alias.name.split(".")[0]
                    found.append((node.lineno, f"import {alias.name}", {bound}))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_mpyc(node.module):
            bound = {alias.asname or alias.name for alias in node.names}
            found.append((node.lineno, f"from {node.module} import ...", bound))
    return found


def _owner(node: ast.expr) -> str | None:
    """The last name of the object whose attribute is taken (``a.b`` in ``a.b._c``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_only_the_adapter_imports_mpyc():
    offences = []
    for path in _modules():
        if path == ADAPTER:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, statement, _ in sorted(_mpyc_imports(tree)):
            offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {statement}")
    assert not offences, "only party/secure/runtime.py may import mpyc:\n" + "\n".join(offences)


def test_no_mpyc_private_names_outside_the_adapter():
    offences = []
    for path in _modules():
        if path == ADAPTER:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        owners = set(MPYC_OWNERS)
        for _, _, bound in _mpyc_imports(tree):
            owners |= bound
        hits = sorted((node.lineno, ast.unparse(node)) for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and _is_private(node.attr)
                      and _owner(node.value) in owners)
        offences += [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}" for line, text in hits]
    assert not offences, ("MPyC private names used outside party/secure/runtime.py "
                          "(add a wrapper there):\n" + "\n".join(offences))


def test_the_adapter_is_the_one_that_imports_mpyc():
    tree = ast.parse(ADAPTER.read_text(), filename=str(ADAPTER))
    assert _mpyc_imports(tree), "party/secure/runtime.py should be the MPyC adapter"
