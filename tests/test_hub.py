"""Hub loading offline: ``sjd_jax.from_pretrained``, ``generate --model NAME`` without ``--ckpt`` and
``convert --from-hub``, against a hub-layout cache (``models--ORG--NAME/{refs/main, snapshots/REV,
blobs}``) filled with the tiny checkpoints of colab/tiny_checkpoints.py, with ``HF_HUB_OFFLINE=1``
(the ``hub_cache`` / ``offline_hub`` fixtures of conftest.py)."""

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

import sjd_jax as S  # noqa: E402
from sjd_jax import families  # noqa: E402
from sjd_jax.cli.main import main as cli  # noqa: E402
from sjd_jax.convert import hub  # noqa: E402
from sjd_jax.io import checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _same_tree(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype, p
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32), err_msg=str(p))


def _snapshot(hub_cache, repo):
    store = hub_cache / ("models--" + repo.replace("/", "--"))
    commit = (store / "refs" / "main").read_text()
    return store / "snapshots" / commit, commit


def test_from_pretrained_converts_once_like_the_cli_and_reuses_it(offline_hub, hub_cache, tmp_path, monkeypatch, capsys):
    """The class model: the hub entry's two convert steps give the checkpoints ``sjd-jax convert`` gives
    for the same files; a second call converts nothing; the manifest names the commit converted."""
    b = S.from_pretrained("llamagen-c2i-b-256", quiet=True)
    snap, commit = _snapshot(hub_cache, "FoundationVision/LlamaGen")
    manual = tmp_path / "manual"
    assert cli(["convert", "--family", "llamagen-c2i", str(snap / "c2i_B_256.pt"), "--out", str(manual / "gpt"),
                "--quiet"]) == 0
    assert cli(["convert", "--family", "llamagen-vq", str(snap / "vq_ds16_c2i.pt"), "--out", str(manual / "vq"),
                "--quiet"]) == 0
    want = S.families.presets.from_checkpoint("llamagen-c2i", manual)
    assert b.gpt_config == want.gpt_config and b.gpt_config.grid_size == (16, 16)  # from the file name
    _same_tree(b.gpt_params, want.gpt_params)
    _same_tree(b.vq_params, want.vq_params)
    entry = offline_hub / "pretrained" / "llamagen-c2i-b-256"
    m = json.loads((entry / hub.MANIFEST).read_text())
    assert m["model"] == "llamagen-c2i" and [s["commit"] for s in m["steps"]] == [commit, commit]
    assert sorted(p.name for p in (entry / "ckpt").iterdir()) == ["gpt", "vq"]

    from sjd_jax.convert import cli as convert_cli

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(convert_cli, "convert", no_conversion)
    again = S.from_pretrained("llamagen-c2i-b-256")
    _same_tree(again.gpt_params, b.gpt_params)
    by_dir = S.from_pretrained(entry)  # the entry directory, or its ckpt: the manifest names the model
    assert by_dir.gpt_config == b.gpt_config and S.from_pretrained(entry / "ckpt").gpt_config == b.gpt_config
    tokens = S.generate(b.gpt_params, b.gpt_config, np.array([3], np.int32), 0, method="sjd", window=8,
                        **b.preset.knobs()).tokens
    assert tokens.shape == (1, 256)
    assert "converting" not in capsys.readouterr().err  # quiet


def test_generate_hub_name_without_ckpt_and_convert_from_hub(offline_hub, hub_cache, tmp_path, capsys):
    """``generate --model janus-pro-1b`` fetches + converts (bfloat16, as released) then samples;
    ``convert --from-hub REPO`` of the same snapshot writes the same checkpoint."""
    from PIL import Image

    png = tmp_path / "fox.png"
    rc = cli(["generate", "--model", "janus-pro-1b", "--prompt", "a red fox", "--n", "1", "--method", "sjd", "--window", "4",
              "--out", str(png), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    stats = json.loads(captured.out)
    assert stats["images"] == 1 and len(stats["nfe_per_image"]) == 1 and stats["nfe_per_image"][0] <= 16
    assert Image.open(png).size[0] >= 64
    cached = offline_hub / "pretrained" / "janus-pro-1b" / "ckpt"
    direct = tmp_path / "direct"
    assert cli(["convert", "--family", "janus-pro", "--from-hub", "deepseek-community/Janus-Pro-1B",
                "--param-dtype", "bfloat16", "--out", str(direct), "--quiet"]) == 0
    (ca, pa), (cb, pb) = checkpoint.load(cached), checkpoint.load(direct)
    assert ca == cb and (cached / "tokenizer.json").read_bytes() == (direct / "tokenizer.json").read_bytes()
    _same_tree(pa, pb)
    assert jax.tree.leaves(pa)[0].dtype == jax.numpy.bfloat16
    # a second generate reuses the conversion: the checkpoint directory is the same inode
    ino = cached.stat().st_ino
    assert cli(["generate", "--model", "janus-pro-1b", "--prompt", "a cat", "--method", "ar", "--out",
                str(tmp_path / "cat.png"), "--quiet"]) == 0
    assert cached.stat().st_ino == ino


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "janus-pro-7b", "--prompt", "x"],
     "deepseek-community/Janus-Pro-7B: snapshot: not in the local hub cache and HF_HUB_OFFLINE is set"),
    (["convert", "--family", "llamagen-c2i", "--from-hub", "FoundationVision/LlamaGen:c2i_L_256.pt", "--out", "{out}"],
     "FoundationVision/LlamaGen: c2i_L_256.pt: not in the local hub cache"),
    (["convert", "--family", "llamagen-c2i", "--from-hub", "nope", "--out", "{out}"],
     "hub reference 'nope': expected ORG/NAME or ORG/NAME:FILE"),
    (["convert", "--family", "llamagen-c2i", "x.pt", "--from-hub", "FoundationVision/LlamaGen:c2i_B_256.pt",
      "--out", "{out}"], "give the checkpoint files (SRC ...) or --from-hub"),
    (["convert", "--family", "lumina-mgpt", "--from-hub", "deepseek-community/Janus-Pro-1B",
      "--vqgan", "hub:GAIR/Anole-7b-v0.1:tokenizer/vqgan.ckpt", "--out", "{out}"],
     "GAIR/Anole-7b-v0.1: tokenizer/vqgan.ckpt: not in the local hub cache"),
])
def test_hub_errors_are_one_line_and_write_nothing(offline_hub, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    rc = cli([a.replace("{out}", str(out)) for a in argv] + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert not (offline_hub / "pretrained").exists() or not any((offline_hub / "pretrained").iterdir())


def test_cache_entry_damage_and_foreign_directories(offline_hub, capsys):
    """An entry whose manifest is gone is converted again; a directory sjd-jax did not write at the
    entry's path is refused and left as it was."""
    entry = offline_hub / "pretrained" / "janus-pro-1b"
    hub.checkpoint_dir("janus-pro-1b", quiet=True)
    (entry / hub.MANIFEST).unlink()
    model, ckpt = hub.checkpoint_dir("janus-pro-1b", quiet=True)
    assert model == "janus-pro-1b" and hub.manifest(entry) is not None and checkpoint.is_checkpoint(ckpt)

    foreign = offline_hub / "pretrained" / "llamagen-c2i-b-256"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="llamagen-c2i-b-256"):
        hub.checkpoint_dir("llamagen-c2i-b-256", quiet=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_names_repos_and_directories(offline_hub, tmp_path):
    with pytest.raises(ValueError, match="several models; choose one of llamagen-c2i-b-256"):
        S.from_pretrained("FoundationVision/LlamaGen")
    assert S.families.loader.resolve("deepseek-community/janus-pro-1b", quiet=True)[0] == "janus-pro-1b"
    with pytest.raises(ValueError, match="neither a directory nor a pretrained model"):
        S.from_pretrained("janus-pro-2b")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="needs model="):
        S.from_pretrained(plain)


def test_without_huggingface_hub(offline_hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match=re.escape("pip install 'sjd-jax[hub]'")):
        S.from_pretrained("janus-pro-1b")


def test_readme_lists_every_hub_file():
    """The README's "Supported checkpoints" table names every repo and file the hub entries fetch."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Supported checkpoints"):]
    table = table[:table.index("\n## ", 5)]
    for f in families.entries():
        for p in f.pretrained:
            assert f"`{p.name}`" in table, p.name
            for step in p.steps:
                assert step.repo in table, (p.name, step.repo)
                for file in step.files:
                    assert file in table, (p.name, file)
                for value in step.flags.values():
                    if value.startswith(hub.HUB_PREFIX):
                        repo, file = hub.parse_spec(value[len(hub.HUB_PREFIX):])
                        assert repo in table and file in table, (p.name, value)


def test_too_little_disk_is_refused_before_converting(offline_hub, tmpfs, monkeypatch):
    """The converted files take about what the sources do: a cache disk with less free space fails
    before any conversion, with one line, and leaves nothing behind."""
    small = tmpfs("small", "size=64k")
    monkeypatch.setenv("SJD_JAX_CACHE", str(small))
    with pytest.raises(ValueError, match=r"MiB free, converting needs about [0-9.]+ MiB \(set SJD_JAX_CACHE"):
        hub.checkpoint_dir("janus-pro-1b", quiet=True)
    assert not any((small / "pretrained").iterdir())


@pytest.mark.parametrize("name", families.pretrained_names())
def test_every_hub_entry_is_a_valid_convert_command(name, offline_hub, tmp_path, monkeypatch):
    """Each entry's steps parse as ``sjd-jax convert`` command lines of a registered converter, with
    its files (and ``hub:`` flag values) fetched, the dtype it names, and the layout its model's
    loader reads (LlamaGen: gpt/ + vq/ (+ t5/); the others: the checkpoint itself). The files are
    not real here: ``fetch`` and the converters are stand-ins."""
    from sjd_jax.convert import cli as convert_cli

    fetched, runs = [], []

    def fetch(repo, files=(), revision=None):
        fetched.append((repo, tuple(files)))
        return [tmp_path / repo / (f or "snapshot") for f in (files or ("",))]

    monkeypatch.setattr(hub, "fetch", fetch)
    monkeypatch.setattr(hub, "_check_space", lambda entry, sources: None)
    monkeypatch.setattr(convert_cli, "convert", lambda family, srcs, out, args: runs.append((family, srcs, out, args)))
    p = families.pretrained(name)
    model, ckpt = hub.checkpoint_dir(name, quiet=True)
    assert model == p.model and model in families.model_names()
    assert len(runs) == len(p.steps)
    for step, (family, srcs, out, args) in zip(p.steps, runs):
        assert family == step.family in families.converter_names()
        assert srcs == fetch(step.repo, step.files) and args.param_dtype == step.dtype
        assert out.name == (step.out or "ckpt")  # inside the entry's temp dir until it is complete
        for flag, value in step.flags.items():
            got = getattr(args, flag.lstrip("-").replace("-", "_"))
            if value.startswith(hub.HUB_PREFIX):
                repo, file = hub.parse_spec(value[len(hub.HUB_PREFIX):])
                assert got == tmp_path / repo / file and (repo, (file,)) in fetched
            else:
                assert str(got) == value
    subdirs = sorted(s.out for s in p.steps)
    want = {"llamagen-c2i": ["gpt", "vq"], "llamagen-t2i-xl": ["gpt", "t5", "vq"]}.get(model, [""])
    assert subdirs == want, subdirs
    settings = families.for_model(model).models[model]
    if settings.get("size"):  # Lumina: converted for the model's image size
        assert {str(settings["size"])} == {s.flags.get("--image-size") for s in p.steps}
