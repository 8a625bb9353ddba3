"""Batch mode resumes from what is really on disk: a finished item whose PNG is missing, empty,
truncated or damaged, or whose part file is empty, is generated again (and only those), with the
same tokens; a run.json that is not a settings object is one line."""

import json

import numpy as np
import pytest

from sjd_jax.cli.main import main

ARGS = ["generate", "--class", "2", "7", "--n", "3", "--method", "ar", "--batch-per-device", "2", "--quiet"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "d"
    assert main([*ARGS, "--out-dir", str(out)]) == 0
    return out, np.load(out / "tokens.npy"), {p.name: p.read_bytes() for p in (out / "images").iterdir()}


def _rerun(out, capsys) -> dict:
    capsys.readouterr()
    assert main([*ARGS, "--out-dir", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_damaged_items_are_generated_again(first_run, tmp_path, capsys):
    src, tokens, pngs = first_run
    import shutil

    out = tmp_path / "d"
    shutil.copytree(src, out)
    images = out / "images"
    (images / "000001.png").unlink()  # missing
    (images / "000002.png").write_bytes(b"")  # empty
    (images / "000003.png").write_bytes(pngs["000003.png"][:40])  # truncated
    bad = bytearray(pngs["000004.png"])
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte: its chunk CRC fails
    (images / "000004.png").write_bytes(bytes(bad))
    st = _rerun(out, capsys)
    assert st["generated_this_run"] == 4 and st["skipped_done"] == 2
    np.testing.assert_array_equal(np.load(out / "tokens.npy"), tokens)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == pngs  # every PNG as first written
    st = _rerun(out, capsys)  # and now everything checks out
    assert st["generated_this_run"] == 0 and st["skipped_done"] == 6


def test_an_empty_part_file_is_generated_again(first_run, tmp_path, capsys):
    src, tokens, _ = first_run
    import shutil

    out = tmp_path / "d"
    shutil.copytree(src, out)
    part = sorted((out / "parts").iterdir())[1]
    part.write_bytes(b"")
    st = _rerun(out, capsys)
    assert st["generated_this_run"] == 2 and st["skipped_done"] == 4
    np.testing.assert_array_equal(np.load(out / "tokens.npy"), tokens)


@pytest.mark.parametrize("text", ["[1, 2]", "\"run\"", "{broken"])
def test_run_json_that_is_not_settings_is_one_line(tmp_path, capsys, text):
    out = tmp_path / "d"
    out.mkdir()
    (out / "run.json").write_text(text)
    assert main([*ARGS, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.json" in err and "remove it or use another --out-dir" in err, err
    assert (out / "run.json").read_text() == text


def test_a_run_with_a_draft_tree_resumes(tmp_path, capsys):
    """run.json holds the tree as a JSON list; the settings of the rerun (a tuple) still match."""
    args = ["generate", "--class", "4", "--n", "1", "--method", "sjd-pac", "--window", "8", "--tree", "2x1",
            "--no-png", "--quiet", "--json", "--out-dir", str(tmp_path / "d")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["drafting"]["tree"] == [2, 1]
    assert main(args) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["generated_this_run"] == 0 and st["skipped_done"] == 1
