"""The package's structure rules, checked on its source: no function past 80 lines, no private
name used across modules, each with a negative control on a synthetic source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("sjd_jax", "convert") for p in (ROOT / d).rglob("*.py"))
MAX_LINES = 80


def long_functions(source: str, limit: int = MAX_LINES):
    """(name, lines) of every function (nested ones too) longer than ``limit`` lines."""
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit:
            out.append((n.name, n.end_lineno - n.lineno + 1))
    return out


def private_uses(source: str):
    """Private names (one leading underscore) taken from another module: ``from m import _x`` and
    ``m._x`` where ``m`` was bound by an import."""
    tree = ast.parse(source)
    modules, found = set(), []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            for a in n.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"from {n.module} import {a.name}")
                else:
                    modules.add(a.asname or a.name)
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules and \
                n.attr.startswith("_") and not n.attr.startswith("__"):
            found.append(f"{n.value.id}.{n.attr}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_stay_short(path):
    assert long_functions(path.read_text()) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path):
    assert private_uses(path.read_text()) == []


def test_structure_checks_catch_violations():
    """Negative controls: a synthetic long function and synthetic private uses are reported."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_LINES + 1)]
    assert long_functions("def f():\n    return 1\n") == []
    src = "import m\nfrom p import _hidden, ok\nfrom q import mod\nm._x\nmod._y\nobj = 1\nobj._z\nm.__name__\n"
    assert private_uses(src) == ["from p import _hidden", "m._x", "mod._y"]


def test_every_package_directory_is_installed():
    """pyproject's explicit package list (needed to install convert/ as sjd_jax.convert) names
    every package directory, and no top-level ``convert`` is installed."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sjd_jax").rglob("__init__.py")}
    assert set(cfg["packages"]) == dirs | {"sjd_jax.convert"}
    assert cfg["package-dir"] == {"sjd_jax.convert": "convert"}


def test_old_module_names_are_the_new_modules():
    """Code written before the layout by role keeps working: each old dotted name imports the new
    module itself (the same object), including submodules of moved packages."""
    import importlib

    import sjd_jax

    for old, new in sjd_jax.MOVED.items():
        assert importlib.import_module(f"sjd_jax.{old}") is importlib.import_module(f"sjd_jax.{new}")
        assert getattr(sjd_jax, old) is importlib.import_module(f"sjd_jax.{new}")
    from sjd_jax.exactness import check
    from sjd_jax.sampling.exactness import check as new_check
    from sjd_jax.vq.model import init_vq_params
    from sjd_jax.core.vq.model import init_vq_params as new_init

    assert check is new_check and init_vq_params is new_init
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("sjd_jax.no_such_module")  # negative control: only moved names resolve
