"""A widget notebook, driven in a real browser: JupyterLab + headless Chromium + selenium.

The test writes a tiny notebook that uses `ipywidgets.interact` (as the real notebooks do)
over a minissd function, serves it with `jupyter lab` on 127.0.0.1 (a free port, a random
token, throw-away config/settings/workspace dirs), opens it in headless Chromium, runs all
cells, presses the right-arrow key on the slider handle and checks that the output was
recomputed by the kernel for the new value. A second notebook shows `viz.orbit_viewer` on
a shipped laptop model (as in notebook 06); the test drags the mouse across its image and checks that the
kernel re-rendered it (the pixels and the azimuth readout change).

It skips (with the reason) when selenium, jupyterlab/ipywidgets, a Chromium binary or
chromedriver is missing, or when the browser cannot be started; `.ci/run` installs them
where it can (Debian's `chromium` + `chromium-driver`, `pip install -e ".[all]"` for
selenium). Set MINISSD_REQUIRE_BROWSER=1 to turn those skips into failures.
"""
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.browser

ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVER_START_S = 120        # jupyter lab to answer its REST API
PAGE_S = 180                # JupyterLab's page and the kernel to be ready (a loaded 2-core box)
RUN_S = 240                 # run-all: import torch + minissd, render the widget
CHANGE_S = 60               # the output to follow one slider step

NOTEBOOK_CELLS = [
    # the same pattern as notebooks 03, 05 and 07: interact over a minissd function
    "from ipywidgets import interact\n"
    "from minissd.data.cameras import orbit_poses\n"
    "\n"
    "def show(n=1):\n"
    "    poses = orbit_poses(n)\n"
    "    print(f'orbit of {n} cameras, poses {tuple(poses.shape)}')\n"
    "\n"
    "interact(show, n=(1, 10, 1));\n",
]

VIEWER_CELLS = [
    # notebooks 01, 06, 07: the drag-to-rotate viewer of one code
    "from minissd.config import get_preset\n"
    "from minissd.ssd.model import Model, find_model\n"
    "from minissd.viz import orbit_viewer\n"
    "model = Model.load(find_model('cars', 'single-stage', get_preset('laptop')))   # the shipped laptop model\n"
    "viewer = orbit_viewer(model, model.codes[0], res=64, controls='mouse')\n"
    "viewer\n",
]


def _skip(reason):
    if os.environ.get("MINISSD_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"MINISSD_REQUIRE_BROWSER is set but: {reason}")
    pytest.skip(reason)


def _find(names, extra=()):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in extra:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _chromium():
    return _find(["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"],
                 ["/usr/lib/chromium/chromium", "/usr/bin/chromium"])


def _chromedriver():
    return _find(["chromedriver"], ["/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver"])


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path, cells=NOTEBOOK_CELLS):
    nb = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "source": src,
                   "outputs": [], "execution_count": None}
                  for i, src in enumerate(cells)],
    }
    path.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def lab(tmp_path):
    """`jupyter lab` serving a temporary folder with the widget notebook; yields (url, token)."""
    for mod in ("jupyterlab", "ipywidgets", "ipykernel"):
        try:
            __import__(mod)
        except ImportError:
            _skip(f"{mod} is not installed (pip install -e '.[all]')")
    work = tmp_path / "work"
    work.mkdir()
    _write_notebook(work / "widget.ipynb")
    _write_notebook(work / "viewer.ipynb", VIEWER_CELLS)
    home = tmp_path / "jupyter"
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_DATA_DIR": str(home / "data"),      # no user kernelspec: python3 = this Python
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
        # the kernel imports THIS checkout's minissd, installed or not
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    # no "receive Jupyter news?" toast, no news fetch
    notification = home / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.expose_app_in_browser=True",          # window.jupyterapp
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                log.flush()
                raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n"
                                     + (tmp_path / "jupyter.log").read_text()[-3000:])
            try:
                with opener.open(f"http://127.0.0.1:{port}/api/status?token={token}",
                                 timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("jupyter lab did not answer within "
                                     f"{SERVER_START_S} s:\n"
                                     + (tmp_path / "jupyter.log").read_text()[-3000:])
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()                 # jupyter shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)       # the server and any kernel it left
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip("selenium is not installed (pip install -e '.[all]' or '.[browser]')")
    chrome, driver_path = _chromium(), _chromedriver()
    if not chrome:
        _skip("no Chromium/Chrome binary found (apt-get install chromium)")
    if not driver_path:
        _skip("no chromedriver found (apt-get install chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-proxy-server", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    # both paths given, so selenium never tries to download a driver or a browser
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(options=opts, service=service)
    except WebDriverException as e:
        _skip(f"{chrome} with {driver_path} did not start: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(PAGE_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, seconds, condition, what):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition)
    except TimeoutException:
        try:
            text = driver.find_element("css selector", "body").text[-2000:]
        except Exception:                 # noqa: BLE001 - only for the message
            text = "(page text unavailable)"
        raise AssertionError(f"timed out after {seconds} s waiting for {what}; page text:\n{text}")


def _js(driver, script):
    try:
        return driver.execute_script(script)
    except Exception:                     # noqa: BLE001 - a page still loading: poll again
        return None


OUTPUT_CSS = ".widget-interact .widget-output"
HANDLE_CSS = ".widget-interact .widget-slider .noUi-handle"
KERNEL_IDLE_JS = """
const app = window.jupyterapp;
if (!app || !app.shell) return null;
const w = app.shell.currentWidget;
if (!w || !w.sessionContext || !w.content) return null;
const k = w.sessionContext.session && w.sessionContext.session.kernel;
return k && w.sessionContext.isReady && k.status === 'idle' ? w.context.path : null;
"""


@contextlib.contextmanager
def _reporting(driver, tmp_path):
    """On failure save a screenshot and name the server log; always print the time taken."""
    t0 = time.monotonic()
    try:
        yield
    except BaseException:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print(f"screenshot: {tmp_path / 'failure.png'}; server log: {tmp_path / 'jupyter.log'}")
        raise
    finally:
        print(f"browser part took {time.monotonic() - t0:.1f} s")


def _open_and_run_all(driver, lab, name):
    """Open notebook `name` of the lab fixture, wait for an idle kernel, run all cells."""
    base, token = lab
    driver.get(f"{base}/lab/tree/{name}?reset&token={token}")
    path = _wait(driver, PAGE_S, lambda d: _js(d, KERNEL_IDLE_JS),
                 f"JupyterLab to open {name} with an idle kernel")
    assert path == name
    driver.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells');")


def _wait_element(driver, css, what):
    """The first element matching `css`, once the notebook has rendered it."""
    return _wait(driver, RUN_S, lambda d: (d.find_elements("css selector", css) or [None])[0], what)


def _output_text(driver):
    els = driver.find_elements("css selector", OUTPUT_CSS)
    return els[0].text.strip() if els else ""


def test_slider_changes_output_in_jupyterlab(browser, lab, tmp_path):   # cheap skips first
    from selenium.webdriver.common.keys import Keys
    driver = browser
    with _reporting(driver, tmp_path):
        _open_and_run_all(driver, lab, "widget.ipynb")
        handle = _wait_element(driver, HANDLE_CSS, "the interact slider to render")
        _wait(driver, RUN_S, lambda d: "orbit of" in _output_text(d),
              "the interact output")
        before = _output_text(driver)
        assert before == "orbit of 1 cameras, poses (1, 4, 4)", before

        handle.send_keys(Keys.ARROW_RIGHT)          # a person's keyboard step: 1 -> 2
        _wait(driver, CHANGE_S, lambda d: _output_text(d) != before,
              "the output to change after the slider moved")
        after = _wait(driver, CHANGE_S,
                      lambda d: (lambda t: t if "poses (2, 4, 4)" in t else None)(
                          _output_text(d)),
                      "the output for n=2")
        assert after == "orbit of 2 cameras, poses (2, 4, 4)", after
        readout = driver.find_elements("css selector", ".widget-interact .widget-readout")
        assert readout and readout[0].text.strip() == "2", [r.text for r in readout]


VIEWER_CSS = "img.minissd-orbit-viewer"
LABEL_JS = """
const img = document.querySelector('img.minissd-orbit-viewer');
const box = img && img.closest('.widget-vbox');
const lab = box && box.querySelector('.widget-label');
return lab ? lab.textContent : null;
"""
PIXELS_JS = """
const img = document.querySelector('img.minissd-orbit-viewer');
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
c.getContext('2d').drawImage(img, 0, 0);
return c.toDataURL('image/png');
"""


def test_drag_rotates_orbit_viewer_in_jupyterlab(browser, lab, tmp_path):
    pytest.importorskip("ipyevents")
    from selenium.webdriver.common.action_chains import ActionChains
    driver = browser
    with _reporting(driver, tmp_path):
        _open_and_run_all(driver, lab, "viewer.ipynb")
        img = _wait_element(driver, VIEWER_CSS, "the orbit viewer's image to render")
        before = _wait(driver, RUN_S, lambda d: _js(d, PIXELS_JS), "the first frame's pixels")
        label = _wait(driver, RUN_S, lambda d: _js(d, LABEL_JS), "the viewer's readout")
        assert label.startswith("azimuth 30"), label

        # a person's drag: press on the image, move right in steps, release
        chain = ActionChains(driver).move_to_element(img).click_and_hold()
        for _ in range(6):
            chain.move_by_offset(12, 0).pause(0.15)
        chain.release().perform()
        after = _wait(driver, CHANGE_S,
                      lambda d: (lambda t: t if t and not t.startswith("azimuth 30") else None)(
                          _js(d, LABEL_JS)),
                      "the viewer's azimuth to change after the drag")
        assert after.startswith("azimuth -"), after                  # dragged right: turns left
        _wait(driver, CHANGE_S, lambda d: (lambda p: p and p != before)(_js(d, PIXELS_JS)),
              "the rendered image to change after the drag")
        shot = os.environ.get("MINISSD_VIEWER_SCREENSHOT")   # docs/export.md's picture
        if shot:
            img.find_element("xpath", "./ancestor::div[contains(@class, 'jp-Cell')][1]").screenshot(shot)
