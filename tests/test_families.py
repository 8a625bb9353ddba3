"""Model families as plug-ins (``sjd_jax.families``): every family resolves by name, checkpoint
kind, model and converter; the registry is what the CLIs offer; ``sjd_jax`` has no import cycle;
a family registered here (nowhere else) is found by checkpoint loading, ``generate`` and ``convert``."""

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import sjd_jax as S
from sjd_jax import families
from sjd_jax.io import checkpoint
from sjd_jax.families import pipelines
from sjd_jax.families import presets
from sjd_jax.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_every_family_resolves_by_name_kind_model_and_converter():
    entries = families.entries()
    assert [f.name for f in entries] == list(families.names())
    for f in entries:
        assert families.get(f.name) is f
        for k in f.kinds:
            assert families.kind(k.name) is k and families.for_kind(k.name) is f
        for m in f.models:
            assert families.for_model(m) is f
        for c in f.converters:
            assert callable(families.converter(c))
    # every kind a checkpoint on disk may name today
    assert set(families.kind_names()) == {"gpt", "vq", "t5", "janus", "lumina", "emu3"}
    assert checkpoint.KINDS == families.kind_names()
    for lookup, what in ((families.get, "family"), (families.kind, "checkpoint kind"),
                         (families.for_model, "model"), (families.converter, "family")):
        with pytest.raises(ValueError, match=f"unknown {what} 'nope'"):
            lookup("nope")


def test_registry_refuses_taken_names():
    janus = families.get("janus-pro")
    with pytest.raises(ValueError, match="already registered"):
        families.register(janus)
    hub_only = families.Pretrained("janus-pro-1b", "z", janus.pretrained[0].steps)  # a taken hub name
    for change in (dict(name="x", kinds=janus.kinds), dict(name="x", kinds=(), converters={}),
                   dict(name="x", kinds=(), models={}, pretrained=()),
                   dict(name="x", kinds=(), models={"z": {}}, converters={}, pretrained=(hub_only,))):
        with pytest.raises(ValueError, match="already registered"):
            families.register(dataclasses.replace(janus, **change))
    with pytest.raises(ValueError, match="loads as unknown model"):
        dataclasses.replace(janus, models={})
    assert families.get("janus-pro") is janus and "x" not in families.names()


def _help_of(command: str, flag: str, capsys, monkeypatch) -> str:
    """The help text of ``sjd-jax command``'s ``flag``, unwrapped."""
    monkeypatch.setenv("COLUMNS", "10000")
    assert cli_main([command, "--help"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.lstrip().startswith(flag + " "))
    return line.split(None, 2)[2].strip()


def test_cli_choices_are_the_registry(capsys, monkeypatch):
    models = families.model_names()
    assert set(models) == {"fashion-mnist", "llamagen-c2i", "llamagen-t2i-xl", "janus-pro-1b", "janus-pro-7b",
                           "lumina-mgpt-7b-512", "lumina-mgpt-7b-768", "lumina-mgpt-7b-1024", "anole-7b",
                           "emu3-gen"}
    model_help = _help_of("generate", "--model", capsys, monkeypatch)
    assert all(m in model_help for m in models), model_help
    # what generate accepts: each registered name gets past the model check (the next error is about
    # its other flags), an unregistered one does not
    for m in models:
        assert cli_main(["generate", "--model", m, "--batch-per-device", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "unknown model" not in err and err.count("\n") == 1, (m, err)
    assert cli_main(["generate", "--model", "nope-7b", "--quiet"]) == 2
    assert "unknown model 'nope-7b'" in capsys.readouterr().err
    assert set(presets.PRESETS) | set(presets.CKPT_MODELS) | set(pipelines.TEXT_MODELS) == set(models)

    assert _help_of("convert", "--family", capsys, monkeypatch).split(" | ") == list(families.converter_names())
    assert set(families.converter_names()) == {"llamagen-c2i", "llamagen-t2i", "llamagen-vq", "janus-pro",
                                               "t5-encoder", "lumina-mgpt", "anole", "emu3"}


def test_sjd_jax_never_imports_torch():
    code = ("import sys, sjd_jax, sjd_jax.families as f; f.entries(); import sjd_jax.convert.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- import graph --------------------------------------------------------------------------------

def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (top level or inside functions; relative imports
    resolved), over every ``*.py`` under the package directory ``root``. Lazy ``importlib`` calls
    (the registry's discovery of family modules) are not imports."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def owner(name: str) -> str | None:  # the module that defines ``name`` (a module or a name in one)
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source for a in node.names]
            else:
                continue
            edges.update(t for t in map(owner, targets) if t is not None and t != mod)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_sjd_jax_import_graph_has_no_cycle():
    graph = import_graph(ROOT / "sjd_jax")
    assert "sjd_jax.families.janus" in graph and "sjd_jax.io.checkpoint" in graph["sjd_jax.families.janus"]
    assert "sjd_jax.core.registry" in graph["sjd_jax.io.checkpoint"]  # the registry, not the family modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_check_finds_cycles(tmp_path):
    """Negative controls: a synthetic graph with a cycle, and a package whose cycle runs through
    relative imports (``from . import``, ``from ..x import``, a function-local import)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name, text in {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .sub.c import f\n",
                       "sub/__init__.py": "", "sub/c.py": "def f():\n    from ..a import b\n",
                       "d.py": "import pkg.a\n"}.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("def f():\n    import importlib\n    importlib.import_module('pkg.a')\n")
    assert find_cycle(import_graph(pkg)) is None


# ---- a family registered here only ---------------------------------------------------------------

TOY = S.GPTConfig(vocab_size=16, grid_size=(2, 2), dim=32, n_layer=1, n_head=2, num_classes=3)


def _flat(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def convert_toy(srcs, out, args) -> dict:
    """The toy family's converter: ``toy.npz`` (flattened params) + ``toy.json`` (GPTConfig) beside it."""
    src = Path(srcs[0])
    config = S.GPTConfig(**json.loads(src.with_suffix(".json").read_text()))
    arrays = np.load(src)
    paths, tree = jax.tree_util.tree_flatten_with_path(S.abstract_params(config))
    params = jax.tree_util.tree_unflatten(tree, [arrays[jax.tree_util.keystr(p)] for p, _ in paths])
    checkpoint.save(out, "toy-gpt", config, params, force=args.force)
    return {"family": "toy-c2i", "out": str(out), "kind": "toy-gpt", "params": S.param_count(params),
            "dtype": "float32", "bytes": 4 * S.param_count(params), "config": config}


def load_toy(family, model, ckpt, *, mesh=None):
    gc, gp = checkpoint.load(Path(ckpt) / "gpt", mesh=mesh)
    vc, vp = checkpoint.load(Path(ckpt) / "vq")
    return presets.Bundle(presets.Preset(model, Path(ckpt), ("a", "b", "c"), **family.defaults), gc, gp, vc, vp)


@pytest.fixture
def toy_family():
    from sjd_jax.core.config import GPTConfig
    from sjd_jax.core.model import abstract_params

    family = families.Family("toy-c2i", "class", kinds=(families.Kind("toy-gpt", GPTConfig, abstract_params),),
                             models={"toy-c2i": {}}, defaults=dict(cfg_scale=1.5, window=2), load=load_toy,
                             converters={"toy-c2i": f"{__name__}:convert_toy"})
    families.register(family)
    yield family
    families.unregister("toy-c2i")
    assert "toy-gpt" not in checkpoint.KINDS


def test_a_new_family_plugs_in(toy_family, tmp_path, capsys):
    from sjd_jax.core.vq import VQConfig
    from sjd_jax.core.vq.model import init_vq_params

    assert families.for_kind("toy-gpt") is toy_family and "toy-gpt" in checkpoint.KINDS
    params = S.init_params(TOY, jax.random.key(0))
    # checkpoint.save / load find the kind in the registry: config and params round trip
    checkpoint.save(tmp_path / "direct", "toy-gpt", TOY, params)
    meta = json.loads((tmp_path / "direct" / "config.json").read_text())
    assert meta["kind"] == "toy-gpt"
    config, loaded = S.load(tmp_path / "direct")
    assert config == TOY and _flat(loaded).keys() == _flat(params).keys()
    assert all(np.array_equal(a, _flat(params)[k]) for k, a in _flat(loaded).items())
    # its converter entry, through the convert CLI
    np.savez(tmp_path / "toy.npz", **_flat(params))
    (tmp_path / "toy.json").write_text(json.dumps(dataclasses.asdict(TOY)))
    ck = tmp_path / "ck"
    assert cli_main(["convert", "--family", "toy-c2i", str(tmp_path / "toy.npz"), "--out", str(ck / "gpt"),
                     "--quiet"]) == 0
    assert checkpoint.kind_of(ck / "gpt") == "toy-gpt"
    vq = VQConfig(codebook_size=TOY.vocab_size, codebook_embed_dim=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                  z_channels=32)
    checkpoint.save(ck / "vq", "vq", vq, init_vq_params(vq, jax.random.key(1), image_size=4))
    # its model, through generate (a smoke run: PNG + stats with the family's defaults; the window is
    # chosen automatically, the family's applies to recipes without acceptance statistics)
    out, stats = tmp_path / "toy.png", tmp_path / "stats.json"
    assert cli_main(["generate", "--model", "toy-c2i", "--ckpt", str(ck), "--class", "0", "2", "--n", "1",
                     "--out", str(out), "--stats-json", str(stats), "--quiet"]) == 0, capsys.readouterr().err
    st = json.loads(stats.read_text())
    assert out.is_file() and st["images"] == 2 and st["cfg_scale"] == 1.5
    assert st["window"] == (st["auto"]["window"] if st["method"] != "ar" else 1)
