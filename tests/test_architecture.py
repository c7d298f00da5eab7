"""The import rules of docs/ARCHITECTURE.md hold: layers import only what they may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "veilql"

FORBIDDEN = {
    "veilql.errors": ["veilql."],
    "veilql.connectors": ["veilql.engine", "veilql.policies", "veilql.ui"],
    "veilql.policies": ["veilql.engine", "veilql.ui"],
    "veilql.engine.sql": ["veilql.engine.mpc", "veilql.engine.transport", "veilql.ui"],
    "veilql.engine.plan": ["veilql."],
    "veilql.engine.rewrite": ["veilql.engine.mpc", "veilql.engine.transport",
                              "veilql.connectors", "veilql.ui"],
    "veilql.engine.transport": ["veilql.engine.mpc", "veilql.engine.operators",
                                "veilql.policies.loader", "veilql.ui"],
    "veilql.engine.mpc": ["veilql.engine.operators", "veilql.engine.sql", "veilql.engine.dp",
                          "veilql.engine.ledger", "veilql.ui"],
    "veilql.engine.dp": ["veilql.engine.mpc", "veilql.engine.transport", "veilql.ui"],
    "veilql.engine.ledger": ["veilql.engine.mpc", "veilql.engine.transport",
                             "veilql.engine.dp", "veilql.ui"],
    "veilql.engine.operators": ["veilql.engine.session", "veilql.engine.node", "veilql.ui"],
    "veilql.engine": ["veilql.ui", "veilql.cli"],
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out.append((name, path))
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_respects_layering(module: str, path: Path) -> None:
    rules = [(pkg, bad) for pkg, bad in FORBIDDEN.items()
             if module == pkg or module.startswith(pkg + ".")]
    for imported in _imports(path):
        for pkg, bad in rules:
            for prefix in bad:
                if imported.startswith(prefix) and not imported.startswith(pkg):
                    raise AssertionError(f"{module} imports {imported} ({pkg} may not import "
                                         f"{prefix}*); see docs/ARCHITECTURE.md")
