"""The packages form floors, and every import goes down (STYLE.md, "Floors").

``schemas`` ← ``infra`` (the ground) ← ``notifiers`` ← ``workers`` / ``streams`` / ``producers``
← ``infra.cli`` (the roof, imported by nobody). The test reads every module's imports with
``ast`` (those inside functions too) and fails on:

- an import from a floor to a higher one;
- a cycle between packages of one floor (workers, streams and producers may use one another
  only one way), and the stream or the relay importing a worker (jobs go by name);
- a project import inside a function, unless its line (or the one above) says why it is lazy
  (``# lazy: …``): an import moved into a function to dodge a cycle hides the cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "infra", "notifiers", "workers", "streams", "producers")
#: The floors, lowest first. A module may import its own floor's packages and lower ones.
FLOORS: dict[str, int] = {
    "schemas": 0,
    "infra": 1,
    "notifiers": 2,
    "workers": 3,
    "streams": 3,
    "producers": 3,
    "infra.cli": 4,
}
#: Same-floor imports that must not exist at all: jobs are sent by name (schemas.commands).
FORBIDDEN = {("streams", "workers"), ("producers", "workers")}
#: Upward imports still to be taken apart (issue 10); each entry is "module -> imported".
KNOWN_UPWARD: set[str] = set()


@dataclass(frozen=True)
class Import:
    module: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int
    in_function: bool
    lazy_reason: bool  # a "# lazy:" comment on its line or the one above


def package_of(module: str) -> str | None:
    """The floor key of ``module``: ``infra.cli`` for the roof, else its top-level package."""
    if module == "infra.cli" or module.startswith("infra.cli."):
        return "infra.cli"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic loads these by file, not by import
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield dotted.removesuffix(".__init__"), path


def imports_of(module: str, path: Path) -> Iterator[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))
    functions = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    inside = {
        id(inner) for function in functions for inner in ast.walk(function) if inner is not function
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module]
        else:
            continue
        nearby = " ".join(lines[max(0, node.lineno - 2) : node.lineno])
        for target in targets:
            if package_of(target) is None:
                continue
            yield Import(module, target, node.lineno, id(node) in inside, "# lazy:" in nearby)


def all_imports() -> list[Import]:
    return [imp for module, path in modules() for imp in imports_of(module, path)]


def test_every_import_goes_down_a_floor_or_stays_on_its_own() -> None:
    upward = sorted(
        f"{imp.module} -> {imp.target}"
        for imp in all_imports()
        if FLOORS[package_of(imp.target)] > FLOORS[package_of(imp.module)]  # type: ignore[index]
    )
    assert sorted(set(upward) - KNOWN_UPWARD) == []
    # (an entry fixed is taken off the list, so the list only shrinks)
    assert sorted(KNOWN_UPWARD - set(upward)) == []


def test_packages_of_one_floor_use_one_another_one_way_only() -> None:
    uses: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports():
        source, target = package_of(imp.module), package_of(imp.target)
        if source != target and FLOORS[source] == FLOORS[target]:  # type: ignore[index]
            uses[source].add(target)  # type: ignore[index]
    pairs = {(a, b) for a, targets in uses.items() for b in targets}
    assert sorted((a, b) for a, b in pairs if (b, a) in pairs) == []
    assert sorted(pairs & FORBIDDEN) == []


def test_the_roof_is_imported_by_nobody() -> None:
    importers = sorted(
        f"{imp.module}:{imp.line}"
        for imp in all_imports()
        if package_of(imp.target) == "infra.cli" and package_of(imp.module) != "infra.cli"
    )
    assert importers == []


def test_no_project_import_hides_inside_a_function_without_saying_why() -> None:
    hidden = sorted(
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if imp.in_function and not imp.lazy_reason
    )
    assert hidden == []


def test_the_checks_see_a_violation_when_there_is_one(tmp_path: Path) -> None:
    # Given a module of the ground floor that imports the roof inside a function
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from infra.cli import main\n", encoding="utf-8")

    # When its imports are read
    [imp] = list(imports_of("infra.bad", path))

    # Then the import is seen as upward and hidden in a function
    assert (imp.target, imp.in_function, imp.lazy_reason) == ("infra.cli", True, False)
    assert FLOORS[package_of(imp.target)] > FLOORS[package_of(imp.module)]  # type: ignore[index]
