"""The lessons' widgets in a real browser: JupyterLab, headless Chromium, Playwright.

For lesson 02 (the will-it-fit widget) and lesson 07 (the DCC-size widget) this starts
JupyterLab on a temporary copy of notebooks/, opens the lesson in Debian's Chromium, runs
every cell, moves the widget's slider(s) with the keyboard and checks that what the widget
shows changes to exactly what the library's callbacks (`fit_verdict` + `verdict_html`,
`dcc_size` + `dcc_size_text`), called here in the test process with the slider's new value,
say it should show, and that its plot is, pixel for pixel, the PNG that the library's plot
function (`plot_fit_curve`, `plot_dcc_size`) gives here through IPython's inline PNG
formatter for the same values. Screenshots before and after each move go to $ATTFC_ARTIFACTS, else
tests/artifacts/.

Skipped when Chromium or the `playwright` package is missing (never `playwright install`:
the test drives the system's Chromium). Knobs: ATTFC_CHROMIUM (the browser's path;
ATTFC_CHROMIUM=/nonexistent shows the skip), ATTFC_BROWSER_TIMEOUT (seconds one lesson may
take to run, default 1800: lesson 07 trains two small models on the CPU, which took 13 minutes
on two busy cores). Deselect with `-m "not browser"`.
"""
from __future__ import annotations

import base64
import html.parser
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = Path(os.environ.get("ATTFC_ARTIFACTS") or ROOT / "tests" / "artifacts")
LESSON_TIMEOUT_S = float(os.environ.get("ATTFC_BROWSER_TIMEOUT", "1800"))
#: how long a widget may take to show the result of a slider move (a kernel round trip + a plot)
UPDATE_TIMEOUT_S = 180.0
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    """The browser to drive: $ATTFC_CHROMIUM, else /usr/bin/chromium, else `chromium` on PATH."""
    forced = os.environ.get("ATTFC_CHROMIUM")
    if forced:
        return forced if os.path.isfile(forced) and os.access(forced, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip(f"no Chromium at {os.environ.get('ATTFC_CHROMIUM') or '/usr/bin/chromium'} nor on PATH "
                f"(Debian: apt-get install chromium); the browser test of the widgets is skipped",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install -e '.[course]'); the browser test of the widgets is skipped")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed; the browser test of the widgets is skipped")

from attfc_lite.memory import BACKBONES, PRECISIONS  # noqa: E402
from attfc_lite.sweep import load_sweep  # noqa: E402
from attfc_lite.widgets import (  # noqa: E402
    _HEAD_LABELS,
    _OPTIMIZER_LABELS,
    dcc_size,
    dcc_size_text,
    fit_curve,
    fit_verdict,
    plot_dcc_size,
    plot_fit_curve,
    verdict_html,
)


# -- JupyterLab ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str, method: str = "GET", timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down (it shuts its kernels down), then make sure its process group is gone."""
    if proc.poll() is None:
        try:
            _request(f"{base}/api/shutdown", token, method="POST")
            proc.wait(timeout=30)
        except Exception:
            pass
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    try:  # anything left in the group (the server's own children)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("0[27]_*.png"):  # this test's files from an earlier run, nothing else
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """JupyterLab on 127.0.0.1, a random port and token, serving a temporary copy of notebooks/
    (lessons 02 and 07 with FAST = True).

    Its config, data, runtime, settings and workspace folders are temporary too, so the user's
    own JupyterLab state cannot change what the test sees. Yields (base_url, token).
    """
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # the lessons' own switch for a slow machine (shorter training, a smaller search): the widgets
    # do not depend on it, and Run All takes half the time
    for lesson in ("02_fc_bottleneck.ipynb", "07_dynamic_class_container.ipynb"):
        text = (root / lesson).read_text()
        assert text.count("FAST = False") == 1, lesson
        (root / lesson).write_text(text.replace("FAST = False", "FAST = True"))
    settings = tmp / "settings"
    # every cell in the DOM (JupyterLab 4 virtualises off-screen cells by default); no news
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel keeps the inline backend
    env.update(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"))
    log_path = artifacts / "jupyterlab.log"
    last_error = ""
    for _attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                _request(f"{base}/api/status", token, timeout=2)
                up = True
                break
            except Exception:
                time.sleep(0.5)
        if up:
            break
        _stop(proc, base, token)
        log.close()
        last_error = log_path.read_text()[-3000:]
    else:
        pytest.fail(f"JupyterLab did not start; the end of its log ({log_path}):\n{last_error}")
    try:
        yield base, token
    finally:
        _stop(proc, base, token)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# -- driving a notebook ----------------------------------------------------------------------

# the notebook panel of `path` among the main area's widgets (needs --LabApp.expose_app_in_browser)
_PANEL = """(path) => { const app = window.jupyterapp;
                        if (!app || !app.shell) return null;
                        for (const w of app.shell.widgets('main'))
                          if (w.context && w.context.path === path) return w;
                        return null; }"""


def _js(body: str) -> str:
    """A page function of `path` (and `arg`) with `panel` bound to the lesson's notebook panel."""
    return f"([path, arg]) => {{ const panel = ({_PANEL})(path); {body} }}"


_STATE = _js("""
    const code = panel.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
    const errors = [];
    panel.content.widgets.forEach((c, i) => {
      if (c.model.type !== 'code') return;
      for (let j = 0; j < c.model.outputs.length; j++) {
        const o = c.model.outputs.get(j).toJSON();
        if (o.output_type === 'error')
          errors.push({cell: i, ename: o.ename, evalue: o.evalue, source: c.model.sharedModel.getSource().slice(0, 300),
                       traceback: (o.traceback || []).join('\\n').replace(/\\x1b\\[[0-9;]*m/g, '').slice(-3000)});
      }
    });
    return {status: panel.sessionContext.kernelDisplayStatus, total: code.length,
            counts: code.map(c => c.model.executionCount),
            running: code.filter(c => (c.promptNode ? c.promptNode.textContent : '').includes('*')).length,
            errors, run_all: window.__attfcRunAll || null};
""")


def _shot(page, target, artifacts: Path, name: str) -> None:
    try:
        target.screenshot(path=str(artifacts / f"{name}.png"))
    except Exception as exc:  # a missing screenshot must not hide the real failure
        print(f"screenshot {name} failed: {exc}")


def _run_lesson(page, base: str, token: str, lesson: str, artifacts: Path) -> None:
    """Open `lesson`, clear its stored outputs, Run All, wait until every code cell ran; fail on an error output."""
    page.goto(f"{base}/lab/tree/{lesson}?token={token}")
    page.wait_for_function(_js("return !!(panel && panel.context.isReady && panel.sessionContext.session "
                                "&& panel.sessionContext.session.kernel && panel.content.widgets.length);"),
                           arg=[lesson, None], timeout=180_000, polling=500)
    page.wait_for_function(_js("return panel.sessionContext.kernelDisplayStatus === 'idle';"),
                           arg=[lesson, None], timeout=180_000, polling=500)
    # Clear the stored outputs so that a finished cell is one that ran in this kernel.
    page.evaluate(_js("""
        window.jupyterapp.shell.activateById(panel.id);
        for (const c of panel.content.widgets)
          if (c.model.type === 'code') { c.model.outputs.clear(); c.model.executionCount = null; }
        const cmd = window.jupyterapp.commands.hasCommand('runmenu:run-all') ? 'runmenu:run-all'
                                                                           : 'notebook:run-all-cells';
        window.__attfcRunAll = null;
        window.jupyterapp.commands.execute(cmd).then(() => { window.__attfcRunAll = 'done'; },
                                                     e => { window.__attfcRunAll = 'failed: ' + e; });
        return cmd;"""), [lesson, None])
    start = time.monotonic()
    state = None
    while time.monotonic() - start < LESSON_TIMEOUT_S:
        state = page.evaluate(_STATE, [lesson, None])
        if state["errors"]:
            _shot(page, page, artifacts, f"{Path(lesson).stem}_error")
            e = state["errors"][0]
            pytest.fail(f"{lesson}: cell {e['cell']} raised {e['ename']}: {e['evalue']}\n--- cell source:\n"
                        f"{e['source']}\n--- traceback:\n{e['traceback']}")
        if (state["run_all"] or "").startswith("failed"):
            pytest.fail(f"{lesson}: Run All {state['run_all']}")
        if state["status"] in ("dead", "autorestarting", "restarting"):
            pytest.fail(f"{lesson}: the kernel is {state['status']} (out of memory?); state {state}")
        if state["status"] == "idle" and state["running"] == 0 and all(c is not None for c in state["counts"]):
            break
        time.sleep(2)
    else:
        _shot(page, page, artifacts, f"{Path(lesson).stem}_timeout")
        done = sum(c is not None for c in state["counts"]) if state else 0
        pytest.fail(f"{lesson}: not every cell ran within {LESSON_TIMEOUT_S:.0f} s "
                    f"({done} of {state['total'] if state else '?'} code cells finished; last state {state}); "
                    f"set ATTFC_BROWSER_TIMEOUT for a slower machine")
    # one fresh kernel ran the lesson top to bottom: execution counts 1, 2, 3, ...
    assert state["counts"] == list(range(1, state["total"] + 1)), f"{lesson}: execution counts {state['counts']}"
    print(f"{lesson}: {state['total']} code cells ran in {time.monotonic() - start:.0f} s")


def _widget_cell(page, lesson: str, call: str, marker: str):
    """The output of the code cell that calls `call` and displays a widget, marked for locators."""
    index = page.evaluate(_js("""
        const i = panel.content.widgets.findIndex(c => c.model.type === 'code'
            && c.model.sharedModel.getSource().includes(arg[0]) && c.node.querySelector('.jupyter-widgets.widget-vbox'));
        if (i >= 0) panel.content.widgets[i].node.setAttribute('data-attfc-widget', arg[1]);
        return i;"""), [lesson, [call, marker]])
    assert index >= 0, f"{lesson}: no cell calling {call} shows a widget after Run All"
    cell = page.locator(f"[data-attfc-widget={marker}]")
    widget = cell.locator(".jp-OutputArea-output .jupyter-widgets.widget-vbox").first
    widget.wait_for(state="visible", timeout=60_000)
    return widget


def _slider(widget, label: str):
    """(handle, readout) of the slider whose description is `label`."""
    box = widget.locator(".widget-hslider").filter(
        has=widget.page.locator("label.widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
    assert box.count() == 1, f"expected one slider labelled {label!r}, found {box.count()}"
    return box.locator(".noUi-handle").first, box.locator(".widget-readout").first


def _move(page, handle, key: str, presses: int) -> None:
    handle.focus()
    for _ in range(presses):
        page.keyboard.press(key)
        page.wait_for_timeout(150)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _wait_shown(read, expected, what: str, timeout: float = UPDATE_TIMEOUT_S):
    """Poll `read()` until it equals `expected`; fail showing both when it does not in time."""
    deadline = time.monotonic() + timeout
    seen = read()
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = read()
    assert seen == expected, f"{what}: the page shows\n  {seen!r}\nbut the library's callback gives\n  {expected!r}"
    return seen


def _plot_src(widget) -> str | None:
    return widget.evaluate("w => { const img = w.querySelector('.widget-html-content img'); return img ? img.src : null; }")


def _pixels(png: bytes) -> tuple:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.size, im.convert("RGBA").tobytes()


def _render(draw) -> bytes:
    """The PNG the kernel's inline backend makes of what `draw()` plots (+ tight_layout), made here."""
    import matplotlib.pyplot as plt
    from IPython.core.pylabtools import print_figure

    plt.close("all")
    draw()
    plt.tight_layout()
    fig = plt.gcf()
    try:
        return print_figure(fig, "png", bbox_inches="tight")  # matplotlib_inline's PNG formatter
    finally:
        plt.close(fig)


def _wait_plot(widget, expected_png: bytes, artifacts: Path, name: str) -> None:
    """Poll the widget's plot until its pixels are those of `expected_png` (plots lag behind the
    text: the kernel draws one per slider step); fail saving both images when they never are."""
    expected = _pixels(expected_png)
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    src = last = None
    while time.monotonic() < deadline:
        now = _plot_src(widget)
        if now and now != src:
            src = now
            last = base64.b64decode(src.split(",", 1)[1])
            if _pixels(last) == expected:
                return
        time.sleep(0.5)
    (artifacts / f"{name}_plot_expected.png").write_bytes(expected_png)
    if last is not None:
        (artifacts / f"{name}_plot_shown.png").write_bytes(last)
    pytest.fail(f"{name}: the widget's plot is not the one the library's plot function draws for these values "
                f"(see {artifacts}/{name}_plot_shown.png and {name}_plot_expected.png)")


def _shutdown_kernel(page, lesson: str) -> None:
    try:
        page.evaluate(_js("return panel ? panel.sessionContext.shutdown().then(() => true) : false;"),
                      [lesson, None])
    except Exception as exc:
        print(f"{lesson}: kernel shutdown from the page failed ({exc}); the server's shutdown stops it")


# -- lesson 02: the will-it-fit widget -------------------------------------------------------


class _VerdictParts(html.parser.HTMLParser):
    """What a browser shows of `verdict_html`: the text, the bar segments' titles and widths (px)."""

    def __init__(self):
        super().__init__()
        self.text, self.titles, self.widths = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "title" in a:
            self.titles.append(a["title"])
            self.widths.append(float(re.search(r"width:\s*([\d.]+)px", a["style"]).group(1)))

    def handle_data(self, data):
        self.text.append(data)


def _expected_verdict(markup: str) -> dict:
    p = _VerdictParts()
    p.feed(markup)
    p.close()
    return {"text": _norm("".join(p.text)), "titles": p.titles, "widths": p.widths}


def _shown_verdict(widget) -> dict:
    shown = widget.evaluate("""w => {
        const c = w.querySelector('.widget-html-content');
        if (!c) return null;
        const segs = Array.from(c.querySelectorAll('div[title]'));
        return {text: c.textContent, titles: segs.map(e => e.getAttribute('title')),
                widths: segs.map(e => parseFloat(e.style.width))};
    }""")
    if shown:
        shown["text"] = _norm(shown["text"])
    return shown


def _fit_settings(widget) -> dict:
    """The will-it-fit controls as the page shows them, turned into `fit_verdict`'s arguments
    with the library's label tables (not with the widget's own code)."""
    shown = widget.evaluate("""w => {
        const out = {};
        for (const box of w.querySelectorAll('.widget-dropdown, .widget-text, .widget-hslider')) {
          const label = box.querySelector('label.widget-label').textContent.trim();
          const sel = box.querySelector('select'), inp = box.querySelector('input'),
                readout = box.querySelector('.widget-readout');
          out[label] = sel ? (sel.selectedOptions.length ? sel.selectedOptions[0].value : null)
                           : inp ? inp.value : readout.textContent.trim();
        }
        return out;
    }""")
    precisions = {v["label"]: k for k, v in PRECISIONS.items()}
    optimizers = {v: k for k, v in _OPTIMIZER_LABELS.items()}
    heads = {v: k for k, v in _HEAD_LABELS.items()}
    backbones = {spec.name: k for k, spec in BACKBONES.items()}
    device = re.fullmatch(r"[\d.]+ GB card \(([\d.]+) GiB\)", shown["device"])
    assert device, f"unexpected device entry {shown['device']!r}"
    fixed = shown["AttFC Q"].startswith("fixed")
    return dict(
        num_classes=int(shown["identities N"]), embedding_dim=int(shown["dim D"]),
        batch_size=int(shown["batch B"].replace(",", "")), precision=precisions[shown["precision"]],
        device_gib=float(device.group(1)), head=heads[shown["head"]], optimizer=optimizers[shown["optimizer"]],
        backbone=None if shown["backbone"].startswith("none") else backbones[shown["backbone"]],
        container_size=int(shown["fixed Q"]) if fixed else None,
    ), shown


def test_will_it_fit_widget_in_browser(lab, browser, artifacts):
    base, token = lab
    lesson = "02_fc_bottleneck.ipynb"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        _run_lesson(page, base, token, lesson, artifacts)
        widget = _widget_cell(page, lesson, "will_it_fit_widget(", "will-it-fit")
        handle, _ = _slider(widget, "batch B")

        settings, shown = _fit_settings(widget)
        # the lesson's call: WebFace42M, D = 512, B = 128, a 24 GiB card, the full FC head, fp32, SGD
        assert shown["dataset"].startswith("WebFace42M"), f"the dataset menu shows {shown['dataset']!r}"
        assert (settings["num_classes"], settings["batch_size"], settings["device_gib"]) == (2_059_906, 128, 24.0)
        expected = _expected_verdict(verdict_html(fit_verdict(**settings)))
        before = _wait_shown(lambda: _shown_verdict(widget), expected, "will-it-fit before the move")
        assert "does not fit" in before["text"]
        plot_args = {k: v for k, v in settings.items() if k in ("embedding_dim", "batch_size", "precision",
                                                                  "optimizer", "backbone", "container_size")}
        result = fit_verdict(**settings)
        png_before = _render(lambda: plot_fit_curve(fit_curve(**plot_args), result))
        _wait_plot(widget, png_before, artifacts, "02_will_it_fit_before")
        _shot(page, widget, artifacts, "02_will_it_fit_before")

        _move(page, handle, "ArrowRight", 3)
        settings_after, _ = _fit_settings(widget)
        assert settings_after["batch_size"] == 128 + 3 * 16, f"batch slider reads {settings_after['batch_size']}"
        assert {k: v for k, v in settings_after.items() if k != "batch_size"} == \
               {k: v for k, v in settings.items() if k != "batch_size"}
        result_after = fit_verdict(**settings_after)
        expected_after = _expected_verdict(verdict_html(result_after))
        assert expected_after != expected, "the callback gives the same display for B = 128 and 176"
        after = _wait_shown(lambda: _shown_verdict(widget), expected_after, "will-it-fit after B 128 -> 176")
        assert after != before
        assert result_after["verdict"] in after["text"]
        plot_args["batch_size"] = settings_after["batch_size"]
        png_after = _render(lambda: plot_fit_curve(fit_curve(**plot_args), result_after))
        assert _pixels(png_after) != _pixels(png_before), "the plot function draws the same for B = 128 and 176"
        _wait_plot(widget, png_after, artifacts, "02_will_it_fit_after_batch")
        _shot(page, widget, artifacts, "02_will_it_fit_after_batch")
    except Exception:
        _shot(page, page, artifacts, "02_will_it_fit_failure")
        raise
    finally:
        _shutdown_kernel(page, lesson)
        page.close()


# -- lesson 07: the DCC-size widget ----------------------------------------------------------

RATIO_MIN_EXP, RATIO_STEP = -2.0, 0.05  # dcc_size_widget's ratio FloatLogSlider: 10 ** (-2 ... 0), step 0.05


def _ratio_from_readout(text: str) -> float:
    """The ratio slider's value: its readout (3 significant digits) snapped to the slider's grid
    of exponents, 10 ** (-2 + 0.05 k); the readout must be that value's rounding (d3's '.3g'
    keeps trailing zeros: 0.3 reads '0.300'; ipywidgets does not accept '.3~g')."""
    shown = float(text)
    k = round((math.log10(shown) - RATIO_MIN_EXP) / RATIO_STEP)
    value = 10 ** (RATIO_MIN_EXP + k * RATIO_STEP)
    assert float(f"{value:.3g}") == shown, f"ratio readout {text!r} is not 10 ** (-2 + 0.05 k) = {value}"
    return value


def _shown_dcc(widget) -> str | None:
    text = widget.evaluate("w => { const p = w.querySelector('.widget-html-content pre'); "
                           "return p ? p.textContent : null; }")
    return _norm(text) if text is not None else None


def test_dcc_size_widget_in_browser(lab, browser, artifacts):
    base, token = lab
    lesson = "07_dynamic_class_container.ipynb"
    sweep = load_sweep("dcc_ratio")  # what the lesson passes to the widget
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        _run_lesson(page, base, token, lesson, artifacts)
        widget = _widget_cell(page, lesson, "dcc_size_widget(", "dcc-size")
        ratio_handle, ratio_readout = _slider(widget, "ratio Q/N")
        n_handle, n_readout = _slider(widget, "identities N")

        def expected_text(ratio: float, n: int) -> str:
            return _norm(dcc_size_text(dcc_size(ratio, n, sweep=sweep)))

        def expected_plot(ratio: float, n: int) -> bytes:
            return _render(lambda: plot_dcc_size(dcc_size(ratio, n, sweep=sweep), sweep))

        # the lesson's call: ratio 0.3, N = 2,059,906 (WebFace42M)
        assert float(ratio_readout.inner_text()) == 0.3 and n_readout.inner_text().strip() == "2,059,906"
        shown = _wait_shown(lambda: _shown_dcc(widget), expected_text(0.3, 2_059_906), "DCC size before the moves")
        png = expected_plot(0.3, 2_059_906)
        _wait_plot(widget, png, artifacts, "07_dcc_size_before")
        _shot(page, widget, artifacts, "07_dcc_size_before")

        # ratio: two steps down, 0.3 -> 10^-0.55 -> 10^-0.6 (about 0.251)
        _move(page, ratio_handle, "ArrowLeft", 2)
        ratio = _ratio_from_readout(ratio_readout.inner_text().strip())
        assert math.isclose(ratio, 10 ** -0.6), f"ratio slider reads {ratio}"
        expected = expected_text(ratio, 2_059_906)
        assert expected != shown
        after_ratio = _wait_shown(lambda: _shown_dcc(widget), expected, "DCC size after ratio 0.3 -> 0.251")
        assert f"Q = {int(ratio * 2_059_906):,} entries" in after_ratio
        png, png_before = expected_plot(ratio, 2_059_906), png
        assert _pixels(png) != _pixels(png_before)
        _wait_plot(widget, png, artifacts, "07_dcc_size_after_ratio")
        _shot(page, widget, artifacts, "07_dcc_size_after_ratio")

        # identities: two steps down from 2,059,906 (10^6.31) -> 10^6.3 -> 10^6.25
        _move(page, n_handle, "ArrowLeft", 2)
        n = int(n_readout.inner_text().strip().replace(",", ""))
        assert n == round(10 ** 6.25), f"identities slider reads {n:,}"
        expected = expected_text(ratio, n)
        assert expected != after_ratio
        after_n = _wait_shown(lambda: _shown_dcc(widget), expected, f"DCC size after N 2,059,906 -> {n:,}")
        assert f"N = {n:,} identities" in after_n and after_n != after_ratio
        png, png_before = expected_plot(ratio, n), png
        assert _pixels(png) != _pixels(png_before)
        _wait_plot(widget, png, artifacts, "07_dcc_size_after_classes")
        _shot(page, widget, artifacts, "07_dcc_size_after_classes")
    except Exception:
        _shot(page, page, artifacts, "07_dcc_size_failure")
        raise
    finally:
        _shutdown_kernel(page, lesson)
        page.close()
