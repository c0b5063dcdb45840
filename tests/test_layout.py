"""The house rule, read from the code itself: services import the toolkit, tools import the toolkit
and the services, and the toolkit imports neither. Imports are read with ``ast`` (every
``import``, ``from ... import``, relative ones resolved, and ``importlib.import_module`` /
``__import__`` of a literal name), wherever they stand in a module: top level, inside a
function, under ``if TYPE_CHECKING``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = "shared.ops"
TOOLKIT = "shared"
SERVICES = ("order_svc", "payment_svc", "inventory_svc")


def module_name(path: Path) -> str:
    """``shared/ops/audit.py`` -> ``shared.ops.audit``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``source`` (the text of ``module``) imports, as absolute dotted names.

    ``from a import b`` yields both ``a`` and ``a.b``: ``b`` may be a submodule (``from shared
    import ops``), and a name that is only an attribute cannot match a package's prefix anyway.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            yield node.args[0].value


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, imports: Iterator[str] | list[str]) -> list[str]:
    """What ``module`` may not import, among ``imports``, by the house rule."""
    found: list[str] = []
    in_tools = within(module, TOOLS)
    in_toolkit = within(module, TOOLKIT) and not in_tools
    own_service = next((s for s in SERVICES if within(module, s)), None)
    for name in sorted(set(imports)):
        if in_tools:
            continue  # tools may import the toolkit and the services
        if within(name, TOOLS):
            found.append(f"{module} imports the tool {name}")
        elif in_toolkit and any(within(name, s) for s in SERVICES):
            found.append(f"{module} (toolkit) imports the service {name}")
        elif own_service and any(within(name, s) for s in SERVICES if s != own_service):
            found.append(f"{module} imports another service's {name}")
    return found


def project_modules() -> list[Path]:
    return sorted(p for top in (TOOLKIT, *SERVICES) for p in (ROOT / top).rglob("*.py"))


def test_the_layout_has_a_toolkit_a_tools_package_and_three_services() -> None:
    names = {module_name(p) for p in project_modules()}
    assert {"shared.consumer", "shared.outbox", "shared.store", "shared.service"} <= names
    assert {f"{TOOLS}.{tool}" for tool in ("audit", "bench", "chaos", "client", "demo", "dlq", "floor")} <= names
    assert {f"{s}.handlers" for s in SERVICES} <= names


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_toolkit_or_service_module_imports_a_tool(path: Path) -> None:
    module = module_name(path)
    imports = list(imported_modules(path.read_text(), module, path.name == "__init__.py"))
    assert violations(module, imports) == []


TOOL = "imports the tool"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "shared.consumer",
            "from shared.ops import audit",
            [f"shared.consumer {TOOL} shared.ops", f"shared.consumer {TOOL} shared.ops.audit"],
        ),
        ("shared.consumer", "from shared import ops", [f"shared.consumer {TOOL} shared.ops"]),
        (
            "shared.consumer",
            "from .ops.client import request",
            [f"shared.consumer {TOOL} shared.ops.client", f"shared.consumer {TOOL} shared.ops.client.request"],
        ),
        ("shared", "from . import ops", [f"shared {TOOL} shared.ops"]),
        ("order_svc.api", "def f():\n    import shared.ops.harness", [f"order_svc.api {TOOL} shared.ops.harness"]),
        (
            "payment_svc.api",
            "import importlib\nimportlib.import_module('shared.ops.dlq')",
            [f"payment_svc.api {TOOL} shared.ops.dlq"],
        ),
        (
            "shared.store",
            "from order_svc import repository",
            [
                "shared.store (toolkit) imports the service order_svc",
                "shared.store (toolkit) imports the service order_svc.repository",
            ],
        ),
        (
            "order_svc.handlers",
            "from payment_svc.domain import Account",
            [
                "order_svc.handlers imports another service's payment_svc.domain",
                "order_svc.handlers imports another service's payment_svc.domain.Account",
            ],
        ),
        ("order_svc.handlers", "from shared.consumer import Route\nfrom order_svc import domain", []),
        ("shared.ops.bench", "from shared.ops import client\nfrom order_svc import handlers", []),
        ("shared.operations", "import shared.opsy", []),
    ],
)
def test_the_rule_catches_each_kind_of_forbidden_import(module: str, source: str, expected: list[str]) -> None:
    assert violations(module, list(imported_modules(source, module, is_package=module == "shared"))) == expected
