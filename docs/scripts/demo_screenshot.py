"""Write docs/demo.png: a screenshot of the web demo (``sjd-jax demo``) after a finished run.

    python docs/scripts/demo_screenshot.py [--out docs/demo.png]

It is the browser test's own flow (tests/test_demo.py::test_browser_generate_and_error: the bundled
model, the default request, headless Debian chromium at 1400x1100), run with
``SJD_JAX_DEMO_SCREENSHOT`` set so the finished run's screenshot is copied to ``--out`` (and the
bad-value one to ``--out``'s name + ``-error``, e.g. docs/demo-error.png). Needs gradio,
selenium, /usr/bin/chromium and /usr/bin/chromedriver (the test extra + apt-get install chromium
chromium-driver).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.png")
    args = ap.parse_args(argv)
    import pytest

    out = args.out.resolve()
    out.unlink(missing_ok=True)
    os.environ["SJD_JAX_DEMO_SCREENSHOT"] = str(out)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not
    code = pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_demo.py::test_browser_generate_and_error"])
    if code != 0 or not out.is_file():
        print(f"no screenshot written (pytest exit {int(code)})", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
