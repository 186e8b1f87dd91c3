"""JupyterLab 4 and Notebook 7 in headless Chromium, driven through the page only
(tests/browser/lab.mjs: clicks, keys, what the DOM shows). The server gets rustloop from the
private Jupyter path conftest.py installs it into; nothing here talks to the kernel directly.

Needs /usr/bin/chromium and playwright-core under $RUSTLOOP_NODE_DIR (tests/run installs both);
without them these tests are skipped. Screenshots of failures go to the folder printed at the
start of the module (also named in each failure). Run All of every notebook in notebooks/ runs
three times over (RUSTLOOP_BROWSER_RUNS changes that) and the runs are compared. The seconds
each scenario took, and their sum, are printed at the end of the module (and written to
timings.txt in the screenshots folder).

The completer's provider timeout is raised from Lab's default of 1 s: the first completion of a
fresh kernel waits for the evaluator's warm-up, and Lab drops slower answers without a trace.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from conftest import KERNEL_NAME, REPO, free_port, stop_server

NODE_DIR = Path(os.environ.get("RUSTLOOP_NODE_DIR", Path.home() / ".cache/rustloop/node"))
SCRIPT = REPO / "tests/browser/lab.mjs"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUNS = int(os.environ.get("RUSTLOOP_BROWSER_RUNS", "3"))

pytestmark = pytest.mark.skipif(
    not (Path("/usr/bin/chromium").exists() and (NODE_DIR / "node_modules/playwright-core").exists()
         and shutil.which("node")),
    reason="needs /usr/bin/chromium, node and playwright-core (tests/run installs them)",
)

SHOTS = Path(tempfile.mkdtemp(prefix="rustloop-browser-shots-"))
print(f"\nbrowser test screenshots (failures): {SHOTS}")

# Seconds per scenario and per server start, summed up at the end of the module.
TIMINGS = []


@pytest.fixture(scope="module", autouse=True)
def report_timings(request):
    started = time.monotonic()
    yield
    total = time.monotonic() - started
    lines = [f"{seconds:8.1f} s  {what}" for what, seconds in TIMINGS]
    lines.append(f"{total:8.1f} s  browser tests in total (test_browser.py)")
    (SHOTS / "timings.txt").write_text("\n".join(lines) + "\n")
    # Past pytest's capture: the CI log shows what the browser tests cost.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines), flush=True)


class Server:
    """`jupyter lab` or `jupyter notebook` on a free port, serving a temporary folder."""

    def __init__(self, app):
        self.root = Path(tempfile.mkdtemp(prefix=f"rustloop-{app}-"))
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ui = "lab" if app == "lab" else "notebook"
        home = Path(tempfile.mkdtemp(prefix="rustloop-jupyter-home-"))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        }
        # Every cell in the DOM (no windowing), no news prompt in the corner, kernel completions
        # however slow (see the module's docstring).
        settings = {
            "notebook-extension/tracker": {"windowingMode": "none"},
            "apputils-extension/notification": {"fetchNews": "false"},
            "completer-extension/manager": {"providerTimeout": 600000},
        }
        for name, value in settings.items():
            file = home / "settings" / f"@jupyterlab/{name}.jupyterlab-settings"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(value))
        self.log = open(self.root.parent / f"{self.root.name}.log", "w")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["jupyter", app, "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--allow-root",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                TIMINGS.append((f"jupyter {app} started", time.monotonic() - started))
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{app} did not start; log: {self.log.name}")
                time.sleep(0.5)

    def notebook(self, name, cells):
        """Writes a rustloop notebook of code cells into the served folder."""
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Rust (rustloop)",
                                     "language": "rust"}
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        nbformat.write(nb, self.root / name)
        return name

    def run(self, scenario, notebook, timeout=1800, **kw):
        """Runs one scenario of lab.mjs; returns its observations."""
        args = {"url": self.url, "token": self.token, "root": str(self.root),
                "notebook": notebook, "ui": self.ui, "shots": str(SHOTS), **kw}
        started = time.monotonic()
        result = subprocess.run(
            ["node", str(SCRIPT), scenario, json.dumps(args)], capture_output=True, text=True,
            timeout=timeout, env={**os.environ, "RUSTLOOP_NODE_DIR": str(NODE_DIR)},
        )
        seconds = time.monotonic() - started
        TIMINGS.append((f"{self.ui} {scenario} {notebook}", seconds))
        # Shown by pytest with a failure: where the screenshots are.
        print(f"{scenario} {notebook}: {seconds:.1f} s; screenshots: {SHOTS}; "
              f"server log: {self.log.name}")
        self.shut_down_kernels()
        assert result.returncode == 0, (
            f"{scenario} failed (screenshots in {SHOTS}, server log {self.log.name}):\n"
            f"{result.stderr[-4000:]}"
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def api(self, path, method="GET"):
        request = urllib.request.Request(f"{self.url}{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self):
        """The page shuts its kernel down (Kernel menu); a kernel a failed scenario left
        behind is shut down through the server, so the next scenario has the machine."""
        for kernel in self.api("/api/kernels"):
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")

    def stop(self):
        stop_server(self.proc, self.log)


@pytest.fixture(scope="module")
def lab():
    server = Server("lab")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nb7():
    server = Server("notebook")
    yield server
    server.stop()


def normalized(run):
    """A run's prompts and outputs with numbers blanked (the notebooks print wall-clock times
    and durations)."""
    return [
        (c["prompt"], [re.sub(r"\d+(\.\d+)?", "N", o) for o in c["outputs"]])
        for c in run["shown"]
    ]


def check_run(run):
    """Every code cell ran in order, none ended in an error (as saved by the page)."""
    saved = run["saved"]
    assert [c["errors"] for c in saved if c["errors"]] == []
    assert [c["count"] for c in saved] == list(range(1, len(saved) + 1))
    prompts = [c["prompt"] for c in run["shown"] if c["code"]]
    assert prompts == [f"[{i + 1}]:" for i in range(len(saved))], prompts


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all_notebook(lab, path):
    """Run All of each notebook in notebooks/, RUNS times over (the kernel restarted and the
    outputs cleared in between): error-free, every cell numbered in order, the same outputs
    each time."""
    shutil.copy(path, lab.root / path.name)
    runs = lab.run("runAll", path.name, times=RUNS)["runs"]
    assert len(runs) == RUNS
    for run in runs:
        TIMINGS.append((f"  one Run All of {path.name}", run["seconds"]))
        check_run(run)
    for run in runs[1:]:
        assert normalized(run) == normalized(runs[0])


@pytest.mark.timeout(1800)
def test_notebook7_runs_a_notebook(nb7):
    """Notebook 7 (the same front end in another shell) runs rich_output.ipynb."""
    path = REPO / "notebooks/rich_output.ipynb"
    shutil.copy(path, nb7.root / path.name)
    check_run(nb7.run("runAll", path.name)["runs"][0])


@pytest.mark.timeout(900)
def test_prompts_of_skipped_cells_after_an_error(lab):
    """Finding 2: Run All over `1`, a panic, `3`, `4` leaves the skipped cells `[ ]` (shown
    and saved as null), as ipykernel does; finding 3: the panic names the cell's line."""
    name = lab.notebook("skipped.ipynb", ["1", 'panic!("boom")', "3", "4"])
    seen = lab.run("skippedPrompts", name)
    shown = seen["shown"]
    assert [c["prompt"] for c in shown] == ["[1]:", "[2]:", "[ ]:", "[ ]:"], shown
    assert "boom" in "".join(shown[1]["outputs"])
    assert "cell line 1" in "".join(shown[1]["outputs"]), shown[1]
    assert [c["count"] for c in seen["saved"]] == [1, 2, None, None], seen["saved"]


@pytest.mark.timeout(1200)
def test_completer_first_entries(lab):
    """Finding 5: `tokio::time::sl` + Tab lists `sleep` before `sleep_until`, no private
    `sleep::`, and choosing the first entry inserts the name only."""
    name = lab.notebook("complete.ipynb", ["1", ""])
    seen = lab.run("completer", name, code="tokio::time::sl")
    print(f"Tab pressed {seen['attempts']} time(s) until the completer showed")
    entries = seen["entries"]
    assert entries[0] == "sleep", seen
    assert "sleep_until" in entries, seen
    assert entries.index("sleep") < entries.index("sleep_until"), seen
    assert not any(e.endswith("::") or "(" in e for e in entries), seen
    assert seen["inserted"].strip() == "tokio::time::sleep", seen


@pytest.mark.timeout(1200)
def test_inspect_tooltip_text(lab):
    """Finding 6: Shift+Tab on `tokio::spawn` shows the docs without rustdoc's hidden lines."""
    name = lab.notebook("inspect.ipynb", ["1", ""])
    seen = lab.run("tooltip", name, code="tokio::spawn")
    print(f"Shift+Tab pressed {seen['attempts']} time(s) until the tooltip showed")
    text = seen["text"]
    assert "spawn" in text
    lines = [line.strip() for line in text.splitlines()]
    assert not [line for line in lines if line == "#" or line.startswith("# ")], text
    assert "drop(socket)" not in text


@pytest.mark.timeout(900)
def test_stop_button_at_await_keeps_earlier_variables(lab):
    """The toolbar's stop button ends a cell waiting at `.await`; a variable of an earlier cell
    is still readable in the next cell."""
    name = lab.notebook("stop.ipynb", [
        "let kept = 41u32;",
        'println!("waiting");\n'
        "tokio::time::sleep(std::time::Duration::from_secs(600)).await;",
        "kept + 1",
    ])
    seen = lab.run("stop", name, before=1, ready="waiting")
    TIMINGS.append(("  stop button: click to idle kernel", seen["stopSeconds"]))
    assert seen["promptBefore"] == "[*]:", seen
    shown = seen["shown"]
    assert "KeyboardInterrupt" in "".join(shown[1]["outputs"]), shown[1]
    assert shown[2]["outputs"] == ["42"], shown[2]


@pytest.mark.timeout(900)
def test_input_box(lab):
    """`rustloop::input` opens Lab's input box; the answer reaches the cell."""
    name = lab.notebook("input.ipynb", [
        'let name = rustloop::input("your name? ").unwrap();\nprintln!("hello {name}");'
    ])
    seen = lab.run("input", name, answer="Ada")
    assert "your name?" in seen["prompt"], seen
    assert "hello Ada" in "".join(seen["shown"][0]["outputs"]), seen


@pytest.mark.timeout(900)
def test_display_updated_by_a_task_after_its_cell_ended(lab):
    """A display that a task updates after its cell ended changes in place under that cell."""
    name = lab.notebook("update.ipynb", [
        'let h = rustloop::display(&rustloop::Html::new("<b>step 0</b>".to_string()));\n'
        "tokio::spawn(async move {\n"
        "    for i in 1..=3 {\n"
        "        tokio::time::sleep(std::time::Duration::from_millis(700)).await;\n"
        '        h.update(&rustloop::Html::new(format!("<b>step {i}</b>")));\n'
        "    }\n"
        "});",
    ])
    states = lab.run("watch", name, until="step 3")["states"]
    # Every state shows at most one output; once the cell ended ([1]) the steps keep coming.
    assert all(len(s["outputs"]) <= 1 for s in states), states
    ended = [s["outputs"] for s in states if s["prompt"] == "[1]:"]
    assert ended[-1] == ["step 3"], states
    assert ["step 2"] in ended, states


@pytest.mark.timeout(900)
def test_progress_bar(lab):
    """rustloop::ProgressBar shows one bar that moves and ends full."""
    name = lab.notebook("progress.ipynb", [
        'let mut bar = rustloop::ProgressBar::with_label(5, "work");\n'
        "for _ in 0..5 {\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(400)).await;\n"
        "    bar.inc(1);\n"
        "}\n"
        "bar.finish();",
    ])
    seen = lab.run("watch", name, until="5/5")
    states = [s for s in seen["states"] if s["outputs"]]
    assert all(len(s["outputs"]) == 1 for s in states), states
    values = [s["progress"][0] for s in states if s["progress"]]
    assert values[-1] == 5, states
    assert len(set(values)) >= 3, states
    assert "work" in seen["shown"][0]["outputs"][0], seen["shown"]


@pytest.mark.timeout(900)
def test_late_task_output_under_its_own_cell(lab):
    """Finding 4: a task spawned in cell A prints after cell B ran; the text shows under A,
    not under B."""
    # The task starts its 1.5 s only when B runs (B sends on the channel), so B has ended
    # before the text comes, however long the cells take to compile.
    name = lab.notebook("late.ipynb", [
        "let (go, ready) = tokio::sync::oneshot::channel::<()>();\n"
        "tokio::spawn(async move {\n"
        "    ready.await.ok();\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;\n"
        '    println!("late from A");\n'
        "});",
        "go.send(()).unwrap();\n2 + 2",
    ])
    seen = lab.run("runEach", name, waitFor="late from A")
    # B ended before A's task printed (otherwise the test shows nothing).
    assert "late from A" not in json.dumps(seen["ranAt"]), seen
    shown = seen["shown"]
    assert "late from A" in "".join(shown[0]["outputs"]), shown
    assert shown[1]["outputs"] == ["4"], shown


@pytest.mark.timeout(900)
def test_widgets_slider_and_button_reach_the_kernel(lab):
    """Issue 12: the page moves a rustloop::widgets slider (its handle focused, End pressed)
    and clicks a button; a task waiting for the click sets a label, which the page then shows
    (kernel to front end), and the next cell reads the slider's new value (front end to
    kernel)."""
    name = lab.notebook("widgets.ipynb", [
        "use rustloop::widgets::*;\n"
        'let speed = IntSlider::new(3, 0, 10).description("speed");\n'
        'let go = Button::new("Go");\n'
        'let clicked = Label::new("not clicked");\n'
        "let panel = HBox::new(&[&speed, &go, &clicked]);\n"
        "panel",
        "let mut clicks = go.clicks();\n"
        "let waiter = { let c = clicked.clone(); tokio::spawn(async move {\n"
        '    clicks.next().await;\n    c.set_value("clicked");\n}) };',
        'format!("speed={} {}", speed.value(), clicked.value())',
    ])
    seen = lab.run("widgets", name, button="Go", label="clicked")
    assert seen["readoutBefore"] == "3", seen
    assert seen["readoutAfter"] == "10", seen
    shown = seen["shown"]
    assert [c["prompt"] for c in shown] == ["[1]:", "[2]:", "[3]:"], shown
    assert shown[2]["outputs"] == ['"speed=10 clicked"'], shown
