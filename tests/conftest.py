import atexit
import gc
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 CPU devices for the mesh tests (tests/test_sharding.py); everything else runs on device 0.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))

# The automatic sampler choice caches timings and acceptance statistics (sjd_jax.tuning.cache):
# each test process (and the CLIs it starts) gets its own empty cache, never the user's.
_CACHE = tempfile.mkdtemp(prefix="sjd-jax-test-cache-")
os.environ["SJD_JAX_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
# Hub loading (sjd_jax.convert.hub) never reaches the network in tests and never reads the user's hub
# cache: offline, over an empty cache (tests/test_hub.py points HF_HUB_CACHE at its own tiny one).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = os.path.join(_CACHE, "hf-hub")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop compiled executables after each test module. The suite compiles several hundred
    sampler loops; kept alive together they exhaust the process's memory mappings on CPU (XLA
    segfaulted in compile at vm.max_map_count = 65530)."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()
    if os.environ.get("SJD_TEST_MAPS"):
        with open("/proc/self/maps") as f:
            print(f"\n[memory mappings after module: {sum(1 for _ in f)}]")


@pytest.fixture(scope="session")
def tiny_c2i_pt(tmp_path_factory):
    """A tiny LlamaGen c2i GPT in the released file format (``{"model": state_dict}``, 4x4 grid
    from its ``_64.pt`` name), written by colab/tiny_checkpoints.py."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "colab"))
    from tiny_checkpoints import llamagen_c2i

    return llamagen_c2i(tmp_path_factory.mktemp("c2i") / "c2i_T_64.pt")


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, options)``: a tmpfs mounted at ``tmp_path / name`` ("size=1m": a full disk;
    "ro": a read-only one root cannot write either), unmounted after the test. Needs root on
    Linux; the test is skipped where mounting is not allowed."""
    import subprocess

    mounted = []

    def mount(name: str, options: str = "size=1m"):
        mnt = tmp_path / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A Hugging Face hub cache (``models--ORG--NAME/{refs/main, snapshots/REV, blobs}``) holding
    tiny random checkpoints under the real repo and file names of ``llamagen-c2i-b-256`` and
    ``janus-pro-1b`` (colab/tiny_checkpoints.py ``hub_cache``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "colab"))
    from tiny_checkpoints import hub_cache as fill

    return fill(tmp_path_factory.mktemp("hf"))


@pytest.fixture
def offline_hub(hub_cache, tmp_path, monkeypatch):
    """``hub_cache`` as the hub, offline; converted models go to a fresh ``SJD_JAX_CACHE`` (returned)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("SJD_JAX_CACHE", str(tmp_path / "sjd-cache"))
    return tmp_path / "sjd-cache"
