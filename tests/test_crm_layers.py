"""crm_lite's arrows point down: domain modules (members, points, lottery, approvals...) import
nothing of the REST layer, and raise errors from crm_lite.errors only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import crm_lite
from crm_lite import errors

PACKAGE = Path(crm_lite.__file__).parent
REST_MODULES = {"rest", "restkit", "api", "assembly"}
"""The HTTP side of crm_lite (with every ``*_api`` module) and the assembly that wires it."""
REST_IMPORTS = {"gateway.api", "gateway.http"}
"""What only the REST side may use of ``gateway``."""


def _is_rest(module: str) -> bool:
    return module in REST_MODULES or module.endswith("_api")


DOMAIN = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__" and not _is_rest(p.stem))


def _imports(name: str) -> set[str]:
    """Every module ``crm_lite/<name>.py`` imports, as absolute dotted names (functions' bodies too)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["crm_lite", *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_domain_list_is_what_it_should_be():
    assert {"members", "points", "lottery", "approvals", "staff", "csvio", "errors"} <= set(DOMAIN)
    assert not {"rest", "restkit", "lottery_api", "approvals_api"} & set(DOMAIN)


def test_the_checker_sees_relative_and_absolute_imports():
    assert "crm_lite.restkit" in _imports("lottery_api")      # from .restkit import ...
    assert "crm_lite.lottery" in _imports("lottery_api")      # from . import lottery as lt
    assert "crm_lite.staff.rotate_staff_token" in _imports("demo")


@pytest.mark.parametrize("name", DOMAIN)
def test_domain_module_imports_no_rest_module(name):
    rest = {m for m in _imports(name)
            if m.startswith("crm_lite.") and _is_rest(m.split(".")[1])
            or any(m == r or m.startswith(r + ".") for r in REST_IMPORTS)}
    assert rest == set(), f"crm_lite/{name}.py imports the REST layer: {sorted(rest)}"


@pytest.mark.parametrize("name", DOMAIN)
def test_domain_module_defines_no_error_of_its_own(name):
    """Errors live in crm_lite/errors.py: one hierarchy, one mapping to HTTP answers."""
    if name == "errors":
        return
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    module = importlib.import_module(f"crm_lite.{name}")
    own = [node.name for node in tree.body if isinstance(node, ast.ClassDef)
           and isinstance(getattr(module, node.name), type) and issubclass(getattr(module, node.name), Exception)]
    assert own == [], f"crm_lite/{name}.py defines errors outside crm_lite.errors: {own}"


def test_every_error_is_a_crm_error_with_a_status_and_a_code():
    kinds = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)
             and v.__module__ == errors.__name__]
    assert len(kinds) >= 9
    for kind in kinds:
        assert issubclass(kind, errors.CrmError), kind
        assert 400 <= kind.status < 500 and kind.code, kind
