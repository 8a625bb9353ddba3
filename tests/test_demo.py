"""``sjd-jax demo``: the runner without a browser, the Gradio API through gradio_client, and the page
in a real headless browser (selenium + Debian's chromium / chromedriver; skipped without them).

The server is ``sjd-jax demo`` itself, started once per module in its own process on a free loopback
port; the client test and the browser test share it (and its compiled samplers), and check the
numbers the page shows against ``sjd_jax.generate`` run here with the same settings. ``SJD_JAX_TEST_ARTIFACTS=DIR`` keeps the
browser screenshots in DIR; ``SJD_JAX_DEMO_SCREENSHOT=PATH`` also writes the finished run's
screenshot to PATH (``docs/scripts/demo_screenshot.py`` sets it to docs/demo.png).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the test server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
N = 256  # the bundled model's image tokens (16 x 16)


@pytest.fixture(scope="module")
def session():
    from sjd_jax.demo import session as session_mod

    return session_mod.load("fashion-mnist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``sjd-jax demo`` itself, in its own process on a free loopback port, serving two requests at a
    time (``--concurrency 2``); its URL once the page answers."""
    pytest.importorskip("gradio")
    port = free_port()
    d = tmp_path_factory.mktemp("demo-server")
    log, result = d / "server.log", d / "stdout.json"
    cmd = [sys.executable, "-m", "sjd_jax.cli.main", "demo", "--port", str(port), "--max-batch", "4",
           "--concurrency", "2", "--json"]
    with open(log, "w") as err, open(result, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sjd-jax demo exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sjd-jax demo did not answer on {url}: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        while not result.read_text().endswith("\n") and time.monotonic() < deadline:
            time.sleep(0.2)
        started = json.loads(result.read_text())  # --json: the one object on stdout, once it serves
        assert started["url"] == url and started["model"] == "fashion-mnist" and started["image_tokens"] == N
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- runner (no gradio, no browser) ------------------------------------------------------------


def reference(session, cls: int, batch: int, seed: int, window: int, progress=None):
    """``sjd_jax.generate`` + decode as a user would call them: (tokens [B, N], uint8 images)."""
    import jax.numpy as jnp

    import sjd_jax
    from sjd_jax.core.vq import decode_tokens, to_uint8
    from sjd_jax.families import presets

    b = presets.load("fashion-mnist")
    out = sjd_jax.generate(b.gpt_params, b.gpt_config, jnp.full((batch,), cls, jnp.int32), seed, method="sjd",
                           window=window, progress=progress, **b.preset.knobs())
    img = to_uint8(decode_tokens(b.vq_params, b.vq_config, out.tokens, b.gpt_config.grid_size))[:, 2:30, 2:30]
    return np.asarray(out.tokens), np.repeat(img, 3, axis=-1)


def reference_nfe(cls: int, seed: int, window: int = 16) -> float:
    """The mean NFE ``sjd_jax.generate`` gives one image of class ``cls`` (the bundled model's defaults)."""
    import jax.numpy as jnp

    import sjd_jax
    from sjd_jax.families import presets

    b = presets.load("fashion-mnist")
    out = sjd_jax.generate(b.gpt_params, b.gpt_config, jnp.full((1,), cls, jnp.int32), seed, method="sjd",
                           window=window, **b.preset.knobs())
    return float(np.asarray(out.nfe).mean())


def check_run(r, batch: int, ar: bool):
    assert r.images.shape == (batch, 28, 28, 3) and r.images.dtype == np.uint8
    assert r.committed.shape == (batch, N) and r.nfe.shape == (batch,)
    assert (r.committed.sum(axis=1) == N).all()  # every token committed exactly once
    assert [np.count_nonzero(row) for row in r.committed] == r.nfe.tolist()  # each forward commits >= 1
    if ar:
        assert (r.nfe == N).all() and r.compression == 1.0
    else:
        assert (r.nfe < N).all() and r.compression == pytest.approx(N / r.nfe.mean())
    assert r.total_forwards == r.nfe.max() and r.wall_s > 0


def test_runner_compares_ar_and_sjd_on_the_same_seed(session):
    import jax

    from sjd_jax.demo import runner

    req = runner.validate(session, cond=3, method="sjd", window=16, seed=0, batch=1)
    seen = []
    c = runner.compare(session, req, progress=lambda *a: seen.append(a))
    check_run(c.ar, 1, ar=True)
    check_run(c.chosen, 1, ar=False)
    assert {s[0] for s in seen} == {"AR", "sjd"} and seen[-1][1:3] == (N, N)  # (phase, done, total, it)
    assert c.ar.label == "AR" and c.chosen.label == "sjd W=16"
    assert re.search(r"NFE 256\.0 per image · 256 tokens in 256\.0 forwards → 1\.00×", c.ar.summary())
    tokens, images = reference(session, 3, 1, 0, 16)  # (no progress hook: a separate compile, same tokens)
    np.testing.assert_array_equal(c.chosen.tokens, tokens)
    np.testing.assert_array_equal(c.chosen.images, images)

    # the same method, window and batch with other numbers: no compile (the knobs are traced)
    compiles = []
    def listen(event, secs, **kw):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = runner.validate(session, cond=5, method="sjd", window=16, seed=7, cfg_scale=3.0, temperature=0.9,
                                top_k=100, top_p=0.95)
        check_run(runner.compare(session, again, progress=lambda *a: None).chosen, 1, ar=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []

    req2 = runner.validate(session, cond=3, method="sjd", window="16", seed=0, batch=2)
    hook = lambda *a: None  # noqa: E731  (the runner's compile: with a progress hook)
    r2 = runner.run_one(session, req2, "sjd", hook)
    check_run(r2, 2, ar=False)
    tokens2, images2 = reference(session, 3, 2, 0, 16, progress=hook)
    np.testing.assert_array_equal(r2.tokens, tokens2)
    np.testing.assert_array_equal(r2.images, images2)
    np.testing.assert_array_equal(r2.tokens[0], c.chosen.tokens[0])  # row keys do not depend on the batch


def test_runner_auto_reports_its_choice(session):
    """method and window "auto": a lossless recipe and window chosen by sjd_jax.tuning, named in the label."""
    from sjd_jax.demo import runner
    from sjd_jax.sampling.recipes import LOSSLESS

    req = runner.validate(session, cond=0, method="auto", window="auto", seed=0)
    r = runner.run_one(session, req, req.method, lambda *a: None)
    m = re.fullmatch(r"auto → (\S+) W=(\d+)", r.label) or re.fullmatch(r"auto → (AR)", r.label)
    assert m and (m.group(1) in LOSSLESS or m.group(1) == "AR"), r.label
    assert r.auto.startswith("auto: ") and (r.committed.sum(axis=1) == N).all()


@pytest.mark.parametrize("field,value,message", [
    ("window", 0, "window must be 1..64 or auto"), ("window", "sixteen", "window must be"),
    ("window", 65, "window must be 1..64"), ("top_p", 2, "top-p must be in (0, 1]"), ("top_p", 0, "top-p"),
    ("top_k", -1, "top-k must be"), ("top_k", 1.5, "top-k must be a finite integer"),
    ("temperature", 0, "temperature must be > 0"), ("cfg_scale", -1, "cfg scale must be >= 0"),
    ("cfg_scale", float("nan"), "cfg scale must be a finite"), ("batch", 0, "batch must be 1..8"),
    ("batch", 9, "batch must be 1..8"), ("cond", 10, "class must be 0..9"), ("cond", None, "class must be a number"),
    ("seed", -1, "seed must be"), ("method", "lantern", "method must be one of"), ("method", "ar", "method"),
])
def test_validate_names_the_field(session, field, value, message):
    from sjd_jax.demo import runner

    kw = dict(cond=0, method="sjd", window=16, seed=0, batch=1)
    kw[field] = value
    with pytest.raises(ValueError) as e:
        runner.validate(session, **kw, max_batch=8)
    assert message in str(e.value)


def test_validate_defaults_and_text_prompts(session):
    import dataclasses

    from sjd_jax.demo import runner

    r = runner.validate(session, cond="Sneaker", window=" auto ", seed=3.0)
    assert (r.cond, r.window, r.seed, r.method) == (7, "auto", 3, "sjd")
    assert r.knobs == {k: session.defaults[k] for k in ("cfg_scale", "temperature", "top_k", "top_p")}
    text = dataclasses.replace(session, kind="text", class_names=())
    assert runner.validate(text, cond="  a cat ").cond == "a cat"
    for empty in ("", "   ", None):
        with pytest.raises(ValueError, match="prompt must not be empty"):
            runner.validate(text, cond=empty)


def test_figures_show_the_forwards(session):
    from sjd_jax.demo import figures

    committed = np.zeros(N, np.int32)
    committed[:4] = [1, 100, 5, 150]  # forwards 0..3
    it = figures.iteration_of(committed, N)
    assert it.tolist() == [0] + [1] * 100 + [2] * 5 + [3] * 150
    grid = figures.token_grid(committed, (16, 16))
    assert grid.shape == (224, 224, 3) and grid.dtype == np.uint8
    pal = figures.colours(4)
    assert (grid[3, 3] == pal[0]).all() and (grid[-3, -3] == pal[3]).all()
    assert (grid[0, 14] == 255).all()  # the white line between forward 0's token and forward 1's
    chart = figures.committed_chart(committed)
    assert chart.shape == (260, 560, 3)
    assert figures.tile(np.zeros((1, 28, 28, 3), np.uint8)).shape == (224, 224, 3)
    assert figures.tile(np.zeros((3, 28, 28, 3), np.uint8)).shape == (2 + 226, 2 + 3 * 226, 3)


def test_load_and_cli_errors(session, capsys):
    from sjd_jax.demo import app
    from sjd_jax.demo import session as session_mod

    with pytest.raises(ValueError, match="--model llamagen-c2i needs --ckpt DIR"):
        session_mod.load("llamagen-c2i")
    with pytest.raises(ValueError, match="Janus-Pro-1B: snapshot: not in the local hub cache and HF_HUB_OFFLINE"):
        session_mod.load("janus-pro-1b")  # a hub name: fetched (conftest: offline, an empty hub cache)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        session_mod.load("nope")
    assert app.main(["--model", "llamagen-c2i"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sjd-jax demo: error: --model llamagen-c2i needs --ckpt DIR")
    assert app.main(["--port", "0"]) == 2 and "--port must be an integer in 1..65535" in capsys.readouterr().err
    assert app.main(["--max-batch", "x"]) == 2 and capsys.readouterr().err.count("\n") == 1
    assert app.main(["--help"]) == 0 and "--concurrency" in capsys.readouterr().out


def test_text_model_from_the_hub(offline_hub):
    """``--model janus-pro-1b`` without ``--ckpt``: fetched from the (tiny, offline) hub cache and
    converted; the runner's prompts give exactly ``from_pretrained(...).generate``'s tokens."""
    import sjd_jax
    from sjd_jax.demo import runner
    from sjd_jax.demo import session as session_mod

    s = session_mod.load("janus-pro-1b")
    assert s.kind == "text" and s.grid == (4, 4)
    req = runner.validate(s, cond="a red fox", method="sjd", window=4, seed=5, batch=2)
    *lines, c = runner.stream(s, req)  # progress reaches the text pipeline's loop too
    assert re.fullmatch(r"sjd: 32/32 tokens after \d+ forwards…", lines[-1]), lines
    tm = sjd_jax.from_pretrained("janus-pro-1b")
    for run, method, window in ((c.ar, "ar", 1), (c.chosen, "sjd", 4)):
        images, out = tm.generate(["a red fox"] * 2, 5, method=method, window=window)
        np.testing.assert_array_equal(run.tokens, np.asarray(out.tokens))
        assert run.images.shape == (2, 64, 64, 3) and (run.committed.sum(axis=1) == 16).all()
    assert c.ar.nfe.tolist() == [16, 16] and (c.chosen.nfe <= 16).all()


def test_without_gradio_one_line(monkeypatch, capsys):
    """gradio missing: one line naming the extra, exit 2, before any weights load."""
    from sjd_jax.demo import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert app.main([]) == 2
    assert capsys.readouterr().err == "sjd-jax demo needs gradio: pip install 'sjd-jax[demo]'\n"


def test_core_package_never_imports_gradio():
    code = ("import sys, sjd_jax, sjd_jax.cli.generate, sjd_jax.cli.main, sjd_jax.demo.app; "
            "assert 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


# ---- gradio_client: the named API endpoint ----------------------------------------------------


def test_gradio_client_generate(server, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from PIL import Image

    client = Client(server, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    status, ar_img, ar_stats, img, stats, chart, grid = client.predict(api_name="/generate")  # the defaults
    assert status.startswith("done: sjd W=16 vs AR at seed 0, 1 image")
    assert "NFE 256.0 per image" in ar_stats
    nfe = float(re.search(r"NFE ([\d.]+) per image", stats).group(1))
    assert nfe == reference_nfe(0, 0) and f"→ {N / nfe:.2f}×" in stats  # the run the page made
    for path, size in ((ar_img, (224, 224)), (img, (224, 224)), (chart, (560, 260)), (grid, (224, 224))):
        assert Image.open(path).size == size
    with pytest.raises(AppError, match=re.escape("top-p must be in (0, 1], got 2.0")):
        client.predict(top_p=2, api_name="/generate")
    with pytest.raises(AppError, match="window must be 1..64 or auto, got 0"):
        client.predict(window="0", api_name="/generate")

    # two users at once (the queue serves two at a time): each gets its own run's numbers
    jobs = {(cls, seed): client.submit(cond=cls, seed=seed, api_name="/generate") for cls, seed in ((7, 1), (2, 3))}
    for (cls, seed), job in jobs.items():
        stats = job.result(timeout=300)[4]
        assert float(re.search(r"NFE ([\d.]+) per image", stats).group(1)) == reference_nfe(cls, seed), stats


# ---- the page in a real browser ---------------------------------------------------------------


@pytest.fixture
def driver(tmp_path):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install "
                    f"chromium chromium-driver")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1100"):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    # the viewport itself 1400 x 1100 (--window-size counts the window, not the page)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1100, "deviceScaleFactor": 1,
                                                              "mobile": False})
    try:
        yield d
    finally:
        d.quit()


def artifacts(tmp_path) -> Path:
    out = Path(os.environ.get("SJD_JAX_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def text_of(driver, elem_id: str) -> str:
    return driver.execute_script(f"const e = document.getElementById('{elem_id}'); return e ? e.innerText : '';")


def natural_size(driver, elem_id: str):
    """(naturalWidth, naturalHeight) of the loaded image inside ``#elem_id``, or None."""
    return driver.execute_script(
        f"const i = document.querySelector('#{elem_id} img');"
        "return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null;")


# every text #status shows, recorded as it changes (progress lines last a fraction of a second)
WATCH_STATUS = """
window.statusLog = [];
const s = document.getElementById('status');
new MutationObserver(() => window.statusLog.push(s.innerText)).observe(s, {subtree: true, childList: true,
                                                                           characterData: true});
"""


def finished(driver) -> bool:
    return ("NFE" in text_of(driver, "ar-stats") and "NFE" in text_of(driver, "chosen-stats")
            and all(natural_size(driver, e) for e in ("ar-image", "chosen-image", "committed-chart", "token-grid")))


def test_browser_generate_and_error(server, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "generate") and d.find_elements(By.ID, "status"))
    driver.execute_script(WATCH_STATUS)
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 180, poll_frequency=0.5).until(finished)
    driver.execute_script("window.scrollTo(0, 0);")  # (the click scrolled the page)
    shot = artifacts(tmp_path) / "demo-browser.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("SJD_JAX_DEMO_SCREENSHOT"):  # docs/scripts/demo_screenshot.py
        shutil.copyfile(shot, os.environ["SJD_JAX_DEMO_SCREENSHOT"])

    assert any(re.search(r"(AR|sjd): \d+/256 tokens after \d+ forward", t) for t in driver.execute_script(
        "return window.statusLog;")), "no progress line was shown while decoding"
    assert "done: sjd W=16 vs AR" in text_of(driver, "status")
    assert "NFE 256.0 per image" in text_of(driver, "ar-stats")
    stats = text_of(driver, "chosen-stats")
    nfe = float(re.search(r"NFE ([\d.]+) per image", stats).group(1))
    assert nfe == reference_nfe(0, 0)  # the defaults: class 0, seed 0, sjd W=16
    assert re.search(rf"{N} tokens in {nfe:.1f} forwards → {N / nfe:.2f}×", stats)
    assert natural_size(driver, "ar-image") == natural_size(driver, "chosen-image") == [224, 224]
    assert natural_size(driver, "committed-chart") == [560, 260]
    assert natural_size(driver, "token-grid") == [224, 224]

    box = driver.find_element(By.CSS_SELECTOR, "#top-p input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("5", Keys.TAB)
    driver.find_element(By.ID, "generate").click()
    message = "top-p must be in (0, 1], got 5.0"
    WebDriverWait(driver, 60).until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)
    shot = artifacts(tmp_path) / "demo-browser-error.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("SJD_JAX_DEMO_SCREENSHOT"):  # docs/demo-error.png next to docs/demo.png
        target = Path(os.environ["SJD_JAX_DEMO_SCREENSHOT"])
        shutil.copyfile(shot, target.with_name(f"{target.stem}-error{target.suffix}"))
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
