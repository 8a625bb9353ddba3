"""The ``sjd-jax`` entry point: top-level help with examples; for every subcommand ``--help``,
``--quiet`` / ``--json``, one-line usage and user errors (exit 2, no traceback); ``--json`` results."""

import json

import pytest

from sjd_jax.cli.main import COMMANDS, main


def test_top_level_help_lists_every_command_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
    examples = out.split("examples:\n", 1)[1]
    assert "sjd-jax generate" in examples and "sjd-jax convert --family" in examples
    assert "--quiet" in out and "--json" in out
    assert main([]) == 2  # no command: usage, non-zero exit
    assert "usage: sjd-jax" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_with_quiet_and_json(capsys, name):
    assert main([name, "--help"]) == 0  # returned, not raised: the same path for every subcommand
    cap = capsys.readouterr()
    assert cap.out.startswith(f"usage: sjd-jax {name} "), cap.out[:80]
    assert "--quiet" in cap.out and "--json" in cap.out, name
    assert cap.err == ""


def _one_error_line(capsys, argv, code=2):
    assert main(argv) == code, argv
    cap = capsys.readouterr()
    err = cap.err
    assert err.count("\n") == 1 and err.startswith(f"sjd-jax {argv[0]}: error: "), err
    assert "Traceback" not in err and cap.out == ""
    return err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_errors_are_one_line_with_a_pointer_to_help(capsys, name):
    err = _one_error_line(capsys, [name, "--bogus"])
    assert f"; see 'sjd-jax {name} --help'" in err
    if name not in ("convert", "train-vq", "train-ar", "train-classifier"):  # they have required args first
        assert "unrecognized arguments: --bogus" in err


def test_bad_flag_value_is_one_line(capsys):
    err = _one_error_line(capsys, ["generate", "--n", "many"])
    assert "argument --n/--n-per-class: invalid int value: 'many'" in err
    err = _one_error_line(capsys, ["shard-plan", "--method", "beam"])
    assert "invalid choice: 'beam'" in err and "see 'sjd-jax shard-plan --help'" in err


# One user error per subcommand, found before any model is loaded or compiled.
USER_ERRORS = {
    "generate": (["--class", "10"], "class 10 out of range: fashion-mnist has classes 0..9"),
    "eval": (["--n", "1"], "--n (confidence intervals need 2 samples per class) must be an integer in 2.."),
    "bench": (["--windows", "16,x"], "--windows takes comma-separated integers"),
    "bench-mesh": (["--images", "0"], "--images must be an integer in 1..1048576, got 0"),
    "shard-plan": (["--model", "llamagen-xxxl"], "unknown model 'llamagen-xxxl'"),
    "convert": (["--family", "llamagen-c2i", "{tmp}/c2i_B_256.pt", "--out", "{tmp}/ck"], "no such file"),
    "demo": (["--port", "0"], "--port must be an integer in 1..65535, got 0"),
    "train-vq": (["--out", "{tmp}/run", "--steps", "0"], "--steps must be an integer in 1.."),
    "train-ar": (["--out", "{tmp}/run", "--vq", "{tmp}/novq"], "is not an sjd-jax checkpoint"),
    "train-classifier": (["--out", "{tmp}/run", "--epochs", "0"], "--epochs must be an integer in 1.."),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, name):
    argv, msg = USER_ERRORS[name]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    cwd_out = {"eval": "eval.json", "bench": "bench.json", "bench-mesh": "bench-mesh.json"}.get(name)
    if cwd_out:
        argv += ["--out", str(tmp_path / cwd_out)]
    for extra in ([], ["--json"], ["--quiet"]):  # neither changes the error path
        err = _one_error_line(capsys, [name, *argv, *extra])
        assert msg in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unknown_command_is_one_line(capsys):
    assert main(["generat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'generat' (did you mean 'generate'?)" in err


def test_run_turns_user_errors_into_one_line(capsys, monkeypatch):
    from sjd_jax.cli import util as cliutil

    def body(args):
        raise FileNotFoundError(2, "No such file or directory", "/nope/x.npz")

    ap = cliutil.Parser("sjd-jax demo")
    assert cliutil.run(ap, [], body) == 2
    assert capsys.readouterr().err == "sjd-jax demo: error: /nope/x.npz: No such file or directory\n"
    assert cliutil.run(ap, [], lambda a: (_ for _ in ()).throw(ValueError("line one\nline two"))) == 2
    assert capsys.readouterr().err == "sjd-jax demo: error: line one; line two\n"
    with pytest.raises(RuntimeError):  # not a user error: a bug keeps its traceback
        cliutil.run(ap, [], lambda a: (_ for _ in ()).throw(RuntimeError("bug")))
    monkeypatch.setenv("SJD_JAX_TRACEBACK", "1")
    with pytest.raises(ValueError):
        cliutil.run(ap, [], lambda a: (_ for _ in ()).throw(ValueError("x")))


def test_eval_json_path_is_the_older_spelling_of_out():
    from sjd_jax.fashion.evaluate import parser

    a = parser().parse_args(["--json", "r.json", "--quiet"])
    assert a.json is True and str(a.out) == "r.json" and a.quiet
    a = parser().parse_args(["--json"])
    assert a.json is True and str(a.out) == "eval.json"
    a = parser().parse_args(["--out", "x.json", "--method", "sjd", "--n-per-class", "7"])
    assert a.json is False and str(a.out) == "x.json" and a.methods == "sjd" and a.n_per_class == 7


def test_token_progress_counts_tokens_and_accepted_per_iteration():
    from sjd_jax.cli.util import TokenProgress

    with TokenProgress(4 * 10, "t", enabled=False) as bar:
        assert bar.begin(2) is None  # disabled: no callback, so generate compiles no progress hook
    with TokenProgress(4 * 10, "t", enabled=True) as bar:
        cb = bar.begin(2)
        cb(2 + 6, 2, 4)  # 2 rows: first tokens + 6 accepted in 2 iterations each -> 1.5 per row-iteration
        assert bar.bar.n == 8 and bar.mean_accepted() == pytest.approx(1.5)
        cb(20, 5, 9)  # one row finished after 4 iterations: 9 row iterations, not 10
        bar.begin(2)  # the second call of a run adds up
        bar(2 + 18, 3, 6)
        assert bar.bar.n == 40 and bar.mean_accepted() == pytest.approx((18 + 18) / (9 + 6))


def test_progress_callback_reports_row_iterations_of_a_batch():
    """The loop's progress report gives what the bar needs to show a row's mean accepted tokens per
    iteration in a batch whose rows finish at different iterations; two-argument callbacks still work."""
    import jax.numpy as jnp
    import numpy as np

    import sjd_jax as S
    from tiny import scaled_params, tiny_config

    config = tiny_config(vocab_size=8, grid_size=(3, 3), dim=16, n_layer=1, n_head=2)
    params = scaled_params(config, seed=1, scale=3.0)
    three, two = [], []
    kw = dict(method="sjd", window=4, cfg_scale=1.5)
    out = S.generate(params, config, jnp.arange(6) % 3, 0, progress=lambda d, i, r: three.append((d, i, r)), **kw)
    S.generate(params, config, jnp.arange(6) % 3, 0, progress=lambda d, i: two.append((d, i)), **kw)
    nfe, committed = np.asarray(out.nfe), np.asarray(out.committed)
    assert len(set(nfe.tolist())) > 1  # rows finish at different iterations
    done, it, row_iters = three[-1]
    assert (done, it) == (6 * 9, nfe.max() - 1) and two == [(d, i) for d, i, _ in three]
    assert row_iters == (nfe - 1).sum()
    assert (done - 6) / row_iters == pytest.approx(committed[:, 1:].sum() / (nfe - 1).sum())


def test_shard_plan_json_and_quiet(tmp_path, capsys):
    argv = ["shard-plan", "--model", "llamagen-xl", "--mesh", "data=2,model=2", "--batch-per-device", "1",
            "--window", "16"]
    assert main([*argv, "--json"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)  # one JSON object and nothing else
    assert r["config"] == "llamagen-xl" and r["devices"] == 4 and r["global_batch"] == 2
    assert cap.out.count("\n") == 1
    assert main([*argv, "--config", "llamagen-xl", "--quiet", "--out", str(tmp_path / "p.json")]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""  # quiet: the plan only in --out
    assert json.loads((tmp_path / "p.json").read_text()) == r


def test_generate_json_is_one_object_on_stdout(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", "--class", "0", "--n", "1", "--method", "ar", "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert cap.out.count("\n") == 1
    assert r["png"] == str(out) and out.is_file() and r["nfe_per_image"] == [256] and r["method"] == "ar"
    assert r["step_compression"] == 1.0 and r["mean_accepted_per_iteration"] == 1.0
    assert "tok/s" in cap.err and "acc_per_iter=1.00" in cap.err  # the bar went to stderr


def test_quiet_convert_prints_nothing(tmp_path, tiny_c2i_pt):
    """--quiet: no progress, no absl/orbax chatter (orbax used to warn on every save)."""
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "sjd_jax.cli.main", "convert", "--family", "llamagen-c2i", str(tiny_c2i_pt),
                        "--out", str(tmp_path / "ck"), "--quiet"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_train_ar_refuses_a_vq_it_cannot_use(tmp_path, capsys):
    """A GPT checkpoint, or an RGB VQ, given as --vq: one line, before any data is read."""
    import jax

    from sjd_jax.io import checkpoint
    from sjd_jax.families.presets import ASSETS
    from sjd_jax.core.vq import VQConfig
    from sjd_jax.core.vq.model import init_vq_params

    rgb = VQConfig(codebook_size=256, codebook_embed_dim=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=32)
    checkpoint.save(tmp_path / "rgb", "vq", rgb, init_vq_params(rgb, jax.random.key(0), image_size=8))
    for vq, msg in ((ASSETS / "fashion_mnist" / "gpt", "holds a 'gpt' checkpoint"),
                    (tmp_path / "rgb", "a 3-channel VQ with 256 codes; the Fashion-MNIST GPT needs a 1-channel VQ")):
        assert main(["train-ar", "--vq", str(vq), "--out", str(tmp_path / "run"), "--quiet",
                     "--data-dir", str(tmp_path / "no-data")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb"]
