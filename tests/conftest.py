import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


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
