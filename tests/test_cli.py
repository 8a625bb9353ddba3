"""The ``sjd-jax`` entry point: top-level help with examples, and ``--help`` of every subcommand."""

import pytest

from sjd_jax.cli import COMMANDS, main


def test_top_level_help_lists_every_command_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
    examples = out.split("examples:\n", 1)[1]
    assert "sjd-jax generate" in examples and "sjd-jax convert --family" in examples
    assert main([]) == 2  # no command: usage, non-zero exit
    assert "usage: sjd-jax" in capsys.readouterr().out


def _exit_code(argv):
    """A subcommand's exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(capsys, name):
    assert _exit_code([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sjd-jax {name} "), out[:80]
    assert "--quiet" in out or name in ("shard-plan", "bench", "bench-mesh"), name


def test_unknown_command_is_one_line(capsys):
    assert main(["generat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'generat'" in err
