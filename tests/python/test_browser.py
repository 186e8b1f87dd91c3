"""JupyterLab 4 and Notebook 7 in headless Chromium, driven through the page only
(tests/browser/lab.mjs: clicks, keys, what the DOM shows). The server gets rustloop from the
private Jupyter path conftest.py installs it into; nothing here talks to the kernel directly.

Needs /usr/bin/chromium and playwright-core under $RUSTLOOP_NODE_DIR (tests/run installs both);
without them these tests are skipped. Screenshots of failures go to the folder printed at the
start of the module (also named in each failure). Run All of every notebook runs once; set
RUSTLOOP_BROWSER_RUNS=3 to run each notebook three times over and compare the runs.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from conftest import KERNEL_NAME, REPO

NODE_DIR = Path(os.environ.get("RUSTLOOP_NODE_DIR", Path.home() / ".cache/rustloop/node"))
SCRIPT = REPO / "tests/browser/lab.mjs"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUNS = int(os.environ.get("RUSTLOOP_BROWSER_RUNS", "1"))

pytestmark = pytest.mark.skipif(
    not (Path("/usr/bin/chromium").exists() and (NODE_DIR / "node_modules/playwright-core").exists()
         and shutil.which("node")),
    reason="needs /usr/bin/chromium, node and playwright-core (tests/run installs them)",
)

# Scenarios that start single cells (selecting a cell, then Ctrl+Enter or the Run menu) or
# open the completer do not work yet in this harness: the cell stays `[ ]` (see the report of
# issue 11). Run All, the tooltip and the prompts after an error do work.
HARNESS_TODO = pytest.mark.xfail(
    strict=False, reason="harness: starting a single cell / opening the completer not working yet"
)

SHOTS = Path(tempfile.mkdtemp(prefix="rustloop-browser-shots-"))
print(f"\nbrowser test screenshots (failures): {SHOTS}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        # Every cell in the DOM (no windowing), no news prompt in the corner.
        settings = {
            "notebook-extension/tracker": {"windowingMode": "none"},
            "apputils-extension/notification": {"fetchNews": "false"},
        }
        for name, value in settings.items():
            file = home / "settings" / f"@jupyterlab/{name}.jupyterlab-settings"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(value))
        self.log = open(self.root.parent / f"{self.root.name}.log", "w")
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
        # Shown by pytest with a failure: where the screenshots are.
        print(f"{scenario} {notebook}: {time.monotonic() - started:.1f} s; screenshots: {SHOTS}")
        assert result.returncode == 0, (
            f"{scenario} failed (screenshots in {SHOTS}):\n{result.stderr[-4000:]}"
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


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
    """A run's prompts and outputs with numbers blanked (timings differ between runs)."""
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
    """Run All of each notebook in notebooks/: error-free, every cell numbered in order, the
    same outputs on each run (RUSTLOOP_BROWSER_RUNS, default 1)."""
    shutil.copy(path, lab.root / path.name)
    runs = lab.run("runAll", path.name, times=RUNS)["runs"]
    for run in runs:
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
    and saved as null), as ipykernel does."""
    name = lab.notebook("skipped.ipynb", ["1", 'panic!("boom")', "3", "4"])
    seen = lab.run("skippedPrompts", name)
    shown = seen["shown"]
    assert [c["prompt"] for c in shown] == ["[1]:", "[2]:", "[ ]:", "[ ]:"], shown
    assert "boom" in "".join(shown[1]["outputs"])
    assert "cell line 1" in "".join(shown[1]["outputs"]), shown[1]
    assert [c["count"] for c in seen["saved"]] == [1, 2, None, None], seen["saved"]


@pytest.mark.timeout(900)
@HARNESS_TODO
def test_completer_first_entries(lab):
    """Finding 5: `tokio::time::sl` + Tab lists `sleep` first, no private `sleep::`, and
    choosing it inserts the name only."""
    name = lab.notebook("complete.ipynb", ["1", ""])
    seen = lab.run("completer", name, code="tokio::time::sl")
    assert seen["entries"][:2] == ["sleep", "sleep_until"], seen
    assert not any(e.endswith("::") or "(" in e for e in seen["entries"]), seen
    assert seen["inserted"].strip() == "tokio::time::sleep", seen


@pytest.mark.timeout(900)
def test_inspect_tooltip_text(lab):
    """Finding 6: Shift+Tab on `tokio::spawn` shows the docs without rustdoc's hidden lines."""
    name = lab.notebook("inspect.ipynb", ["1", ""])
    text = lab.run("tooltip", name, code="tokio::spawn")["text"]
    assert "spawn" in text
    lines = [line.strip() for line in text.splitlines()]
    assert not [line for line in lines if line == "#" or line.startswith("# ")], text
    assert "drop(socket)" not in text


@pytest.mark.timeout(900)
@HARNESS_TODO
def test_stop_button_at_await_keeps_earlier_variables(lab):
    """The stop button on a cell waiting at `.await` ends it; an earlier variable is still
    readable in the next cell."""
    name = lab.notebook("stop.ipynb", [
        "let kept = 41u32;",
        "tokio::time::sleep(std::time::Duration::from_secs(600)).await;",
        "kept + 1",
    ])
    seen = lab.run("stop", name, before=1, afterMs=3000)
    assert seen["stillRunning"], seen
    shown = seen["shown"]
    assert "KeyboardInterrupt" in "".join(shown[1]["outputs"]), shown[1]
    assert shown[2]["outputs"] == ["42"], shown[2]


@pytest.mark.timeout(900)
@HARNESS_TODO
def test_input_box(lab):
    """`rustloop::input` opens JupyterLab's input box; the answer reaches the cell."""
    name = lab.notebook("input.ipynb", [
        'let name = rustloop::input("your name? ").unwrap();\nprintln!("hello {name}");'
    ])
    seen = lab.run("input", name, answer="Ada")
    assert "your name?" in seen["prompt"], seen
    assert "hello Ada" in "".join(seen["shown"][0]["outputs"]), seen


@pytest.mark.timeout(900)
@HARNESS_TODO
def test_display_updated_by_a_task_after_its_cell_ended(lab):
    """A display a task updates after its cell ended changes in place under that cell."""
    name = lab.notebook("update.ipynb", [
        'let h = rustloop::display(&rustloop::Html::new("<b>step 0</b>".to_string()));\n'
        "tokio::spawn(async move {\n"
        "    for i in 1..=3 {\n"
        "        tokio::time::sleep(std::time::Duration::from_millis(700)).await;\n"
        '        h.update(&rustloop::Html::new(format!("<b>step {i}</b>")));\n'
        "    }\n"
        "});",
    ])
    seen = lab.run("watch", name, forMs=6000, everyMs=200)
    final = seen["samples"][-1]
    assert final["outputs"] == ["step 3"], final
    shown = [s["outputs"] for s in seen["samples"] if s["prompt"] != "[*]:"]
    assert ["step 1"] in shown or ["step 2"] in shown, seen["samples"]


@pytest.mark.timeout(900)
@HARNESS_TODO
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
    seen = lab.run("watch", name, forMs=5000, everyMs=200)
    outputs = [s["outputs"] for s in seen["samples"] if s["outputs"]]
    assert outputs and all(len(o) == 1 for o in outputs), outputs
    assert len({o[0] for o in outputs}) >= 3, outputs
    assert len(seen["shown"][0]["outputs"]) == 1, seen["shown"]


@pytest.mark.timeout(900)
@pytest.mark.xfail(
    strict=False,
    reason="finding 4 is not fixed yet (see test_lab_findings.py); the harness cannot run single "
    "cells yet either",
)
def test_late_task_output_under_its_own_cell(lab):
    """Finding 4: a task spawned in the first cell prints after the second cell ran; the text
    shows under the first cell."""
    name = lab.notebook("late.ipynb", [
        "tokio::spawn(async {\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;\n"
        '    println!("late from the first cell");\n'
        "});",
        "2 + 2",
    ])
    shown = lab.run("runEach", name, finalWaitMs=4000)["shown"]
    assert "late from the first cell" in "".join(shown[0]["outputs"]), shown
    assert shown[1]["outputs"] == ["4"], shown
