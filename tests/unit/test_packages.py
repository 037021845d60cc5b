"""The six top-level packages are this repository's, never PyPI packages of the same names."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producers", "workers", "streams", "notifiers", "schemas", "infra")


@pytest.mark.parametrize("name", PACKAGES)
def test_package_resolves_to_this_repository(name: str) -> None:
    # Given the package name (`notifiers`, `schemas`, `workers` also exist on PyPI)
    # When it is imported
    module = importlib.import_module(name)

    # Then it is the folder in this repository
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent.parent == REPO_ROOT
    assert Path(module.__file__).resolve().parent == REPO_ROOT / name


def test_pyproject_includes_exactly_the_six_packages() -> None:
    # Given pyproject.toml
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        pyproject = tomllib.load(handle)

    # When the package discovery includes are read
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]

    # Then they are the six packages (with their subpackages) and nothing else
    assert len(include) == len(PACKAGES)
    assert {entry.removesuffix("*") for entry in include} == set(PACKAGES)


def test_every_listed_package_is_a_folder_here() -> None:
    # Given / When / Then: each listed package exists in the repository with an __init__.py
    for name in PACKAGES:
        assert (REPO_ROOT / name / "__init__.py").is_file(), name
