"""The test suite's own layout: no test file imports another one. Shared helpers live in
tests/conftest.py (fixtures) or plain modules (tests/tiny.py, tests/fixtures_convert.py, ...), so that
a test module can be run, moved or deleted on its own and pytest never imports one twice."""

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[-1].startswith("test_") or (len(parts) > 1 and parts[0] == "tests" and parts[1].startswith("test_"))


def imported_test_modules(source: str) -> list[str]:
    """Every test module that ``source`` imports (``import``/``from`` statements anywhere, relative
    ``from . import test_x`` and ``importlib.import_module`` / ``__import__`` with a literal name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module and _is_test_module(module):
                found.append(module)
            elif module in ("", "tests"):  # from . import test_x / from tests import test_x
                found += [a.name for a in node.names if a.name.startswith("test_")]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            arg = node.args[0].value
            if fname in ("import_module", "__import__") and isinstance(arg, str) and _is_test_module(arg):
                found.append(arg)
    return found


def test_no_test_file_imports_another():
    files = sorted(TESTS.glob("test_*.py"))
    assert len(files) > 20 and Path(__file__) in files
    bad = {f.name: hits for f in files if (hits := imported_test_modules(f.read_text()))}
    assert not bad, f"test files importing other test files (move the helper to conftest.py or a plain module): {bad}"


@pytest.mark.parametrize("source", [
    "from test_vq import hf_model",
    "import test_llamagen_parity",
    "import test_vq as v",
    "import numpy, test_sharding",
    "from tests.test_vq import state_dict",
    "from . import test_vq",
    "from tests import test_vq",
    "def f():\n    from test_vqgan import _taming_vqgan\n    return _taming_vqgan",
    "import importlib\nm = importlib.import_module('test_lumina')",
    "m = __import__('test_emu3')",
])
def test_check_catches_test_imports(source):  # negative control: each of these must be flagged
    assert imported_test_modules(source), source


@pytest.mark.parametrize("source", [
    "from tiny import tiny_config",
    "from fixtures_convert import llamagen_state_dict",
    "import pytest\nfrom sjd_jax import testing",
    "from sjd_jax.convert.vq import janus_to_llamagen_key",
    "x = 'import test_vq'",
])
def test_check_passes_plain_imports(source):
    assert not imported_test_modules(source), source
