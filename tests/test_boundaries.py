"""Boundaries a tool checks (import-linter runs the layer contracts in `make check` and
`make test`): what the code imports is declared, and no package reaches into another's
private names."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("nst_cli", "nst_core", "flows", "tools", "bench")
# Imported only by the optional Ray runner (flows/runners.py), declared in the `ray` extra.
OPTIONAL = {"prefect_ray": "ray", "ray": "ray"}


def _sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every absolute import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def _private_names_from_other_packages(path: Path) -> list[str]:
    own = path.relative_to(ROOT).parts[0]
    return [
        f"{path.relative_to(ROOT)}:{line}: {name} from {module}"
        for module, names, line in _imports(path)
        if module.split(".")[0] in SOURCE_PACKAGES and module.split(".")[0] != own
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]


def test_no_package_imports_another_packages_private_names():
    offenders = [
        line
        for path in _sources(*SOURCE_PACKAGES)
        for line in _private_names_from_other_packages(path)
    ]
    assert offenders == []


def test_the_private_name_check_catches_what_flows_cli_once_did(tmp_path):
    # e0305f3's flows/cli.py imported nst_core.cli's _parse_overrides and _roots.
    module = ROOT / "flows" / "_probe_for_the_check.py"
    module.write_text("from nst_core.cli import _parse_overrides, app\n")
    try:
        found = _private_names_from_other_packages(module)
    finally:
        module.unlink()
    assert found == ["flows/_probe_for_the_check.py:1: _parse_overrides from nst_core.cli"]


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        spec for extra in project["optional-dependencies"].values() for spec in extra
    ]
    return {_normal(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_code_imports_is_declared():
    """Imported directly, declared directly: nothing may arrive only because another
    dependency happens to bring it (pydantic through Prefect, numpy through torchvision)."""
    declared = _declared()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_normal(re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0]) for s in project["dependencies"]}
    owners = metadata.packages_distributions()
    missing = []
    for path in _sources("nst_cli", "nst_core", "flows"):
        for module, _, line in _imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in SOURCE_PACKAGES:
                continue
            if top in OPTIONAL:
                assert OPTIONAL[top] in project["optional-dependencies"], top
                continue
            distributions = {_normal(d) for d in owners.get(top, [top])}
            if not distributions & runtime:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module} ({distributions})")
    assert missing == [], missing
    assert runtime <= declared
