"""The one write path (sjd_jax.io.atomic): planted symlinks, failed and killed writes, --force limits,
leftover sweeps. Every case asserts the exact outcome: what is on disk afterwards, byte for byte."""

import errno
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from sjd_jax.io import atomic
from sjd_jax.io import checkpoint

from tiny import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _params(config, seed):
    from sjd_jax.core.model import init_params

    return init_params(config, jax.random.key(seed))


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_file_replaces_a_planted_symlink_never_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "st.json").symlink_to(victim)
    # the fixed temp names the package used before (generate, bench, eval, streaming, PNGs)
    for legacy in (".st.json.tmp", "st.json.tmp", f".st.json.tmp-{os.getpid()}"):
        (out / legacy).symlink_to(victim)
    atomic.write_json(out / "st.json", {"a": 1})
    assert victim.read_text() == "precious"
    assert not (out / "st.json").is_symlink() and (out / "st.json").read_text() == '{\n "a": 1\n}'
    assert oct((out / "st.json").stat().st_mode & 0o777) == oct(0o666 & ~atomic._UMASK)


def test_taken_temp_names_are_skipped_not_followed(tmp_path, monkeypatch):
    """Symlinks planted at the very temp names the writer draws: it must skip them (O_EXCL |
    O_NOFOLLOW, mkdir) and write elsewhere; the victims stay as they were."""
    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victim_dir"
    victim.write_text("precious")
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("x")

    def draws():  # every temp name the writers try first is a planted symlink
        for i in range(1000):
            yield "aaaa"
            yield f"u{i}"

    names = draws()
    monkeypatch.setattr(atomic, "_token", lambda: next(names))
    (tmp_path / (atomic.temp_prefix("f.bin") + "aaaa")).symlink_to(victim)
    atomic.write_bytes(tmp_path / "f.bin", b"new")
    assert (tmp_path / "f.bin").read_bytes() == b"new" and victim.read_text() == "precious"
    (tmp_path / (atomic.temp_prefix("ck") + "aaaa")).symlink_to(victim_dir)
    config = tiny_config()
    checkpoint.save(tmp_path / "ck", "gpt", config, _params(config, 0))
    assert _listing(victim_dir) == ["keep"] and checkpoint.load(tmp_path / "ck")[0] == config


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.write_file(target, full_disk)
    assert _listing(tmp_path) == ["report.json"] and target.read_text() == "old"


def test_force_replaces_only_what_sjd_jax_wrote(tmp_path, monkeypatch):
    """The data-loss reproduction of issue 18: --force on a directory of someone else's files."""
    config = tiny_config()
    params = _params(config, 0)
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match="not an sjd-jax checkpoint and not empty.*nothing touched"):
        checkpoint.save(d, "gpt", config, params, force=True)
    assert _listing(d) == ["sub", "thesis.txt"] and (d / "thesis.txt").read_text() == "x"
    monkeypatch.chdir(d)  # --out . --force: the working directory stays as it is
    with pytest.raises(ValueError, match="nothing touched"):
        checkpoint.save(".", "gpt", config, params, force=True)
    assert _listing(d) == ["sub", "thesis.txt"]
    f = tmp_path / "file"
    f.write_text("y")
    link = tmp_path / "link"
    link.symlink_to(d)
    for target in (f, link):
        with pytest.raises(ValueError, match="not a directory.*nothing touched"):
            checkpoint.save(target, "gpt", config, params, force=True)
    assert f.read_text() == "y" and link.is_symlink() and _listing(d) == ["sub", "thesis.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint.save(empty, "gpt", config, params, force=True)  # an empty directory may be replaced
    other = _params(config, 1)
    checkpoint.save(empty, "gpt", config, other, force=True)  # and an sjd-jax checkpoint
    for a, b in zip(jax.tree.leaves(checkpoint.load(empty)[1]), jax.tree.leaves(other)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _listing(tmp_path) == ["d", "empty", "file", "link"]  # no temp, no aside copy


def test_sweep_removes_dead_processes_temps_and_restores_an_interrupted_swap(tmp_path):
    """Temps of a dead process are removed by the next write in their directory; a directory that
    a replacement had moved aside (killed between its two renames) goes back in place; live
    processes' temps, other hosts' and unrelated files stay."""
    code = textwrap.dedent(f"""
        from pathlib import Path
        from sjd_jax.io import atomic
        d = Path({str(tmp_path)!r})
        atomic.exclusive_temp(d, "a.png")                       # a half-written file
        (atomic.exclusive_temp(d, "ck", directory=True) / "x").write_text("partial")
        old = atomic.exclusive_temp(d, "model", "old", directory=True)  # 'model' moved aside
        (old / "config.json").write_text("the old checkpoint")
        print(__import__("os").getpid())
    """)
    dead = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout)
    mine = atomic.exclusive_temp(tmp_path, "b.json")  # a live process's (ours)
    (tmp_path / f".c.npz.tmp-{dead}").write_text("legacy")  # the pre-atomic naming
    foreign = tmp_path / f".d.png.tmp-otherhost-{dead}-abcd"
    foreign.write_text("another host's")
    (tmp_path / "user.txt").write_text("mine")
    assert len(list(tmp_path.iterdir())) == 7
    atomic.sweep(tmp_path, force=True)
    assert _listing(tmp_path) == sorted([mine.name, foreign.name, "model", "user.txt"])
    assert (tmp_path / "model" / "config.json").read_text() == "the old checkpoint"


def test_sweep_runs_on_the_next_write(tmp_path):
    code = (f"from sjd_jax import atomic; from pathlib import Path; "
            f"atomic.exclusive_temp(Path({str(tmp_path)!r}), 'x.json')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert len(list(tmp_path.iterdir())) == 1
    atomic._swept.discard(str(tmp_path))
    atomic.write_text(tmp_path / "y.json", "{}")
    assert _listing(tmp_path) == ["y.json"]


# ---- kill -9 at random moments ------------------------------------------------------------------

_REPLACER = textwrap.dedent("""
    import sys
    import jax
    sys.path.insert(0, "tests")
    from tiny import tiny_config
    from sjd_jax.io import checkpoint
    from sjd_jax.core.model import init_params
    config = tiny_config()
    trees = [init_params(config, jax.random.key(s)) for s in (0, 1)]
    path = sys.argv[1]
    print("ready", flush=True)
    i = 0
    while True:  # replace the checkpoint over and over until killed
        checkpoint.save(path, "gpt", config, trees[i % 2], force=True)
        i += 1
""")


def test_kill_during_force_replacement_leaves_the_old_or_the_new(tmp_path):
    """A child replaces a checkpoint in a loop (--force) and is killed (SIGKILL) at random moments:
    the checkpoint must always load, verified, as one of the two versions; the next write sweeps
    what the killed process left."""
    config = tiny_config()
    versions = [_params(config, s) for s in (0, 1)]
    ck = tmp_path / "ck"
    checkpoint.save(ck, "gpt", config, versions[0])
    rng = np.random.default_rng(0)
    for k in range(6):
        child = subprocess.Popen([sys.executable, "-c", _REPLACER, str(ck)], stdout=subprocess.PIPE, cwd=ROOT)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        child.kill()
        child.wait()
        atomic._swept.discard(str(tmp_path))
        atomic.sweep(tmp_path)  # what any later write or load does first
        assert _listing(tmp_path) == ["ck"], _listing(tmp_path)
        got = checkpoint.load(ck)[1]  # verified: checksums and finite
        match = [i for i, v in enumerate(versions)
                 if all(np.array_equal(np.asarray(a), np.asarray(b))
                        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(v)))]
        assert len(match) == 1


def test_kill_during_convert_leaves_nothing_or_a_checkpoint(tmp_path, tiny_c2i_pt):
    """``sjd-jax convert`` killed at random moments: --out is absent or a loadable checkpoint, and
    a rerun removes every leftover (temps, staging) and completes."""
    rng = np.random.default_rng(1)
    out = tmp_path / "ck"
    cmd = [sys.executable, "-m", "sjd_jax.cli.main", "convert", "--family", "llamagen-c2i", str(tiny_c2i_pt),
           "--out", str(out), "--quiet"]
    for k in range(4):
        child = subprocess.Popen(cmd + (["--force"] if out.exists() else []), cwd=ROOT)
        time.sleep(rng.uniform(1.0, 5.0))
        child.kill()
        child.wait()
        if out.exists():
            checkpoint.load(out)
    assert subprocess.run(cmd + ["--force"], cwd=ROOT).returncode == 0
    assert _listing(tmp_path) == ["ck"]
    checkpoint.load(out)


# ---- a full disk -----------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmpfs):
    """1 MiB: writes past it fail with ENOSPC in orbax's C++ I/O too."""
    return tmpfs("full", "size=1m")


def test_full_disk_is_one_error_and_leaves_the_old_checkpoint(small_tmpfs):
    small = tiny_config()
    big = tiny_config(dim=128, n_layer=4)  # ~3.5 MB of float32: does not fit in 1 MiB
    ck = small_tmpfs / "ck"
    checkpoint.save(ck, "gpt", small, _params(small, 0))
    before = _listing(small_tmpfs)
    with pytest.raises((ValueError, OSError)) as e:
        checkpoint.save(ck, "gpt", big, _params(big, 0), force=True)
    msg = str(e.value)
    assert str(ck) in msg and "\n" not in msg and ".tmp-" not in msg, msg
    assert re.search(r"No space left|RESOURCE_EXHAUSTED|space", msg), msg
    assert _listing(small_tmpfs) == before  # no temp tree, no 0-byte files
    assert checkpoint.load(ck)[0] == small


def test_full_disk_convert_cli(small_tmpfs, tiny_c2i_pt):
    r = subprocess.run([sys.executable, "-m", "sjd_jax.cli.main", "convert", "--family", "llamagen-c2i",
                        str(tiny_c2i_pt), "--out", str(small_tmpfs / "ck"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("sjd-jax convert: error:"), r.stderr
    assert str(small_tmpfs / "ck") in r.stderr and ".tmp-" not in r.stderr
    assert _listing(small_tmpfs) == []


# ---- every writer goes through the module -----------------------------------------------------------

_WRITES = re.compile(r"write_text\(|write_bytes\(|open\([^)]*['\"][wax]b?\+?['\"]|\.savefig\(|np\.savez?\(|"
                     r"os\.replace|os\.rename|\.rename\(|shutil\.(rmtree|copyfile|copy|move)\(|torch\.save\(|"
                     r"\.save\(")
# Allowed, each with its reason: writes inside an exclusive temp directory that atomic.directory
# swaps into place as a whole; the staging memmaps (an exclusive temp dir); calls whose argument
# is a file object from atomic.write_file; developer benchmarks writing synthetic inputs into
# their own scratch directory.
_ALLOWED = {
    "sjd_jax/io/atomic.py": None,
    "sjd_jax/io/checkpoint.py": ("tmp / ", "ocp.save("),
    "sjd_jax/fashion/train.py": ("ocp.save(tmp",),
    "convert/staging.py": ("shutil.rmtree(self.root",),
    "convert/bench_memory.py": None, "convert/bench_staging.py": None, "convert/bench_emu3_convert.py": None,
    "convert/bench_load.py": ("/proc/sys/vm/drop_caches", "shutil.rmtree(work"),
}


def test_no_write_bypasses_the_atomic_module():
    bad = []
    for path in sorted([*ROOT.glob("sjd_jax/**/*.py"), *ROOT.glob("convert/*.py")]):
        rel = str(path.relative_to(ROOT))
        allowed = _ALLOWED.get(rel, ())
        if allowed is None:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if not _WRITES.search(code) or "lambda f:" in code or re.search(
                    r"\batomic\.|\b(checkpoint|classifier)\.save\(", code):
                continue  # file objects of atomic.write_file; the atomic module; checkpoint writers
            if code.strip().startswith(('"', "'", "``")) or any(a in code for a in allowed):
                continue
            bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "writes that bypass sjd_jax.io.atomic:\n" + "\n".join(bad)


def test_replacement_without_rename_exchange(tmp_path, monkeypatch):
    """Where the kernel or filesystem has no RENAME_EXCHANGE: the old directory is renamed aside,
    the new one into place; if that second rename fails, the old one goes back."""
    config = tiny_config()
    old, new = _params(config, 0), _params(config, 1)
    ck = tmp_path / "ck"
    checkpoint.save(ck, "gpt", config, old)
    monkeypatch.setattr(atomic, "_rename_exchange", lambda a, b: False)
    checkpoint.save(ck, "gpt", config, new, force=True)
    assert _listing(tmp_path) == ["ck"]
    for a, b in zip(jax.tree.leaves(checkpoint.load(ck)[1]), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    real_rename = os.rename

    def second_rename_fails(src, dst):
        if ".tmp-" in str(src) and str(dst) == str(ck):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="Input/output error"):
        checkpoint.save(ck, "gpt", config, old, force=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _listing(tmp_path) == ["ck"]
    for a, b in zip(jax.tree.leaves(checkpoint.load(ck)[1]), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
