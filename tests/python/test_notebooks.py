"""The notebooks in notebooks/ are executable documentation: each must run top to bottom on the
kernel with no error, and what they show is asserted here.

Two paths are tested:
- in process with nbclient (what `jupyter nbconvert --execute` uses underneath), then the outputs
  of particular cells are checked;
- `jupyter nbconvert --to notebook --execute` as a subprocess, the way CI runs notebooks, which
  must exit with status 0.

The kernelspec comes from conftest.py (imported by pytest before this module), which installs it
into a private Jupyter path and points JUPYTER_PATH there.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import CELL_TIMEOUT, FIRST_CELL_TIMEOUT, KERNEL_NAME, REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Whole-notebook limit for the subprocess run: a cold first cell plus the notebook's own sleeps.
NOTEBOOK_TIMEOUT = FIRST_CELL_TIMEOUT + 600


def _ids(paths):
    return [p.stem for p in paths]


# ------------------------------------------------------------------ helpers


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def cell_with(nb, marker):
    """The one code cell whose source contains `marker`."""
    found = [c for c in code_cells(nb) if marker in c.source]
    assert len(found) == 1, f"expected one cell containing {marker!r}, found {len(found)}"
    return found[0]


def cell_exactly(nb, source):
    """The one code cell whose whole source is `source` (e.g. a `:tasks` command)."""
    found = [c for c in code_cells(nb) if c.source.strip() == source]
    assert len(found) == 1, f"expected one cell {source!r}, found {len(found)}"
    return found[0]


def stream(cell, name="stdout"):
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def rich_outputs(cell, kinds=("execute_result", "display_data")):
    return [o for o in cell.outputs if o.output_type in kinds]


def all_data(nb, mime):
    """Every `mime` value in execute_result/display_data outputs of the notebook."""
    return [
        o.data[mime]
        for c in code_cells(nb)
        for o in rich_outputs(c)
        if mime in o.get("data", {})
    ]


def error_outputs(nb):
    return [
        (i, o)
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]


def describe_errors(errors):
    return "\n".join(
        f"cell {i}: {o.ename}: {o.evalue}\n" + "\n".join(o.get("traceback", []))
        for i, o in errors
    )


def elapsed(cell, label):
    """Seconds printed by a cell as `elapsed (<label>): 1.23 s`."""
    m = re.search(r"elapsed \(" + re.escape(label) + r"\): ([0-9.]+) s", stream(cell))
    assert m, f"no 'elapsed ({label})' line in:\n{stream(cell)}"
    return float(m.group(1))


def in_order(text, *parts):
    """True if every part occurs in `text`, in this order."""
    pos = 0
    for part in parts:
        found = text.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return True


# ------------------------------------------------------------------ executing


class _Timeouts:
    """nbclient timeout_func: the first code cell may compile tokio on a cold cache."""

    def __init__(self):
        self.seen_first = False

    def __call__(self, cell):
        if not self.seen_first:
            self.seen_first = True
            return FIRST_CELL_TIMEOUT
        return CELL_TIMEOUT


_executed = {}


def executed(path):
    """The notebook at `path` executed with nbclient (once per test session), and its duration."""
    if path not in _executed:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name=KERNEL_NAME,
            timeout_func=_Timeouts(),
            startup_timeout=120,
            allow_errors=True,  # errors are collected and reported by the tests below
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.monotonic()
        client.execute()
        _executed[path] = (nb, time.monotonic() - start)
    return _executed[path]


def notebook(name):
    path = NOTEBOOK_DIR / name
    if not path.exists():
        pytest.skip(f"{name} is not in notebooks/")
    nb, _ = executed(path)
    return nb


# ------------------------------------------------------------------ every notebook


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"coroutines_and_tasks.ipynb", "rich_output.ipynb", "widgets.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_is_clean(path):
    """Valid nbformat 4, rustloop kernelspec, Rust language_info, and no outputs saved."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {
        "name": "rustloop",
        "display_name": "Rust (rustloop)",
        "language": "rust",
    }
    assert nb.metadata.language_info["name"] == "rust"
    for cell in code_cells(nb):
        assert cell.outputs == [], f"saved outputs in cell:\n{cell.source[:200]}"
        assert cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_without_errors(path):
    nb, seconds = executed(path)
    print(f"{path.name}: executed in {seconds:.1f} s")
    errors = error_outputs(nb)
    assert not errors, describe_errors(errors)
    for cell in code_cells(nb):
        assert cell.execution_count is not None, f"cell not executed:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_nbconvert_execute_subprocess(path, tmp_path):
    """The CI way: `jupyter nbconvert --to notebook --execute` exits 0."""
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [str(jupyter)] if jupyter.exists() else [sys.executable, "-m", "jupyter"]
    out = tmp_path / path.name
    cmd += [
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        f"--ExecutePreprocessor.kernel_name={KERNEL_NAME}",
        f"--ExecutePreprocessor.timeout={int(FIRST_CELL_TIMEOUT)}",
        "--output-dir",
        str(tmp_path),
        "--output",
        path.name,
        str(path),
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=path.parent,
        env=os.environ.copy(),  # JUPYTER_PATH from conftest
        capture_output=True,
        text=True,
        timeout=NOTEBOOK_TIMEOUT,
    )
    print(f"{path.name}: nbconvert took {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, f"nbconvert exit {proc.returncode}\n{proc.stderr[-5000:]}"
    result = nbformat.read(out, as_version=4)
    errors = error_outputs(result)
    assert not errors, describe_errors(errors)
    if path.name == "widgets.ipynb":
        # nbconvert keeps the widgets: their state is saved in the notebook's metadata
        state = result.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
        assert state["version_major"] == 2 and len(state["state"]) > 20


# ------------------------------------------------------------------ coroutines_and_tasks


@pytest.fixture(scope="module")
def coro():
    return notebook("coroutines_and_tasks.ipynb")


def test_coroutines_hello_world(coro):
    cell = cell_with(coro, 'println!("Hello...");')
    assert in_order(stream(cell), "Hello...\n", "... World!\n")


def test_coroutines_sequential_awaits_take_three_seconds(coro):
    cell = cell_with(coro, 'elapsed (sequential)')
    out = stream(cell)
    assert in_order(out, "started at ", "hello\n", "world\n", "finished at ")
    assert 2.9 <= elapsed(cell, "sequential") <= 3.7


@pytest.mark.parametrize("label", ["tasks", "JoinSet"])
def test_coroutines_concurrent_tasks_take_two_seconds(coro, label):
    cell = cell_with(coro, f"elapsed ({label})")
    assert in_order(stream(cell), "started at ", "hello\n", "world\n", "finished at ")
    assert 1.9 <= elapsed(cell, label) <= 2.6


def test_coroutines_unawaited_future_warns(coro):
    cell = cell_with(coro, "nested();")
    assert "42\n" in stream(cell)
    warning = stream(cell, "stderr")
    assert "futures do nothing unless you `.await` or poll them" in warning
    assert "nested()" in warning


def test_coroutines_futures_and_tasks(coro):
    assert "1. future created" in stream(cell_with(coro, "let value = fut.await;"))
    assert "task returned 42" in stream(cell_with(coro, "let task = tokio::spawn(nested());"))
    assert "future resolved with 42" in stream(cell_with(coro, "fn legacy_api"))
    assert stream(cell_with(coro, "async fn callback(")).strip() == "22"
    assert stream(cell_with(coro, "fn fib() {}")).strip() == "()"


def test_coroutines_task_spans_cells(coro):
    assert "this cell ends now" in stream(cell_with(coro, "let background = tokio::spawn"))
    assert "returned 144" in stream(cell_with(coro, "let result = background.await"))


def test_coroutines_gather(coro):
    cell = cell_with(coro, "elapsed (join!)")
    out = stream(cell)
    assert "Task C: factorial(4) = 24" in out
    assert "(2, 6, 24)" in out
    assert 2.9 <= elapsed(cell, "join!") <= 3.7
    out = stream(cell_with(coro, "tokio::try_join!"))
    assert 'try_join! -> Err("b failed")' in out


def test_coroutines_shield_and_abort(coro):
    out = stream(cell_with(coro, "drop(handle);"))
    assert "dropped handle -> task finished anyway: true" in out
    assert "abort() -> JoinError::is_cancelled() = true, task finished: false" in out
    out = stream(cell_with(coro, "shield(something())"))
    assert "shielded task still delivered: important result" in out
    assert "finished = false" in out


def test_coroutines_timeouts(coro):
    out = stream(cell_with(coro, "async fn long_running_task()"))
    assert "The long operation timed out, but we've handled it." in out
    assert "This statement will run regardless." in out
    out = stream(cell_with(coro, "timeout_at(deadline"))
    assert 'step1: Ok("step 1 done")' in out
    assert "step2: Err(" in out
    assert "after reschedule: work finished" in out


def test_coroutines_waiting_primitives(coro):
    assert in_order(stream(cell_with(coro, "// FIRST_COMPLETED")), "first completed: fast", "then: slow")
    out = stream(cell_with(coro, "set.join_next().await"))
    assert in_order(out, "the 100 ms task", "the 200 ms task", "the 300 ms task")


def test_coroutines_threads(coro):
    cell = cell_with(coro, "elapsed (to_thread)")
    assert in_order(stream(cell), "started main at", "start blocking_io at", "blocking_io complete at", "finished main at")
    assert 0.9 <= elapsed(cell, "to_thread") <= 1.6
    assert "computed on a std::thread" in stream(cell_with(coro, "block_in_place"))
    assert "received on a std::thread: 3" in stream(cell_with(coro, "rx.blocking_recv()"))
    out = stream(cell_with(coro, "recv_timeout"))
    assert in_order(out, "The coroutine took too long, cancelling the task...", "cancelled: true")


def test_coroutines_introspection(coro):
    out = stream(cell_with(coro, "let sleepers"))
    ids = json.loads(re.search(r"spawned tasks (\[.*\])", out).group(1))
    assert len(ids) == 3
    listing = stream(cell_exactly(coro, ":tasks"))
    assert "live task(s)" in listing, listing
    for task_id in ids:
        assert re.search(rf"^\s*{task_id}\s", listing, re.M), listing
    assert "all sleepers finished: [1, 2, 3]" in stream(cell_with(coro, "all sleepers finished"))


def test_coroutines_cancellation_and_task_object(coro):
    out = stream(cell_with(coro, "async fn cancel_me()"))
    assert in_order(out, "cancel_me(): before sleep", "cleanup in Drop", "main(): cancel_me is cancelled now")
    assert "after sleep" not in out
    assert "worker: cancelled cleanly" in stream(cell_with(coro, "cancel.changed()"))
    cell = cell_with(coro, "async fn might_fail")
    assert "task panicked with: x is too large: 99" in stream(cell)
    assert "x is too large: 99" in stream(cell, "stderr")  # the kernel reports the task panic
    out = stream(cell_with(coro, "abort_handle()"))
    assert "cancelled(): true" in out
    assert "done callback: Ok(10)" in out


# ------------------------------------------------------------------ rich_output


@pytest.fixture(scope="module")
def rich():
    return notebook("rich_output.ipynb")


def test_rich_svg_charts(rich):
    svgs = all_data(rich, "image/svg+xml")
    assert sum(s.lstrip().startswith("<svg") for s in svgs) >= 2
    line = rich_outputs(cell_with(rich, "let chart = line_chart("), ("execute_result",))
    assert len(line) == 1 and "<polyline" in line[0].data["image/svg+xml"]
    bars = rich_outputs(cell_with(rich, "Svg::new(bar_chart("), ("execute_result",))
    assert len(bars) == 1 and bars[0].data["image/svg+xml"].count("<rect") > 20
    assert bars[0].data["text/plain"]


def test_rich_html_table(rich):
    (result,) = rich_outputs(cell_with(rich, "let mut peaks"), ("execute_result",))
    html = result.data["text/html"]
    assert "<table" in html
    assert html.count("<tr>") == 6  # header and five peaks
    assert "0.5134" in html


def test_rich_markdown_latex_json(rich):
    md = all_data(rich, "text/markdown")
    assert any("| mean |" in m for m in md)
    latex = all_data(rich, "text/latex")
    assert any(r"\sin(2\pi f t)" in t for t in latex)
    (data,) = all_data(rich, "application/json")
    if isinstance(data, str):
        data = json.loads(data)
    assert data["samples"] == 20000
    assert sum(data["bins"]["counts"]) == 20000
    assert len(data["peaks"]) == 5


def test_rich_png(rich):
    (png,) = all_data(rich, "image/png")
    assert png.startswith("iVBORw0KGgo")  # base64 of the PNG signature


def test_rich_debug_text_and_custom_types(rich):
    (result,) = rich_outputs(cell_with(rich, "struct Sample"), ("execute_result",))
    assert result.data["text/plain"] == 'Sample { name: "first", values: [1.0, 2.5, 4.0] }'
    (result,) = rich_outputs(cell_with(rich, 'Text::new("two lines'), ("execute_result",))
    assert result.data["text/plain"] == 'two lines,\n"unquoted" and unescaped'
    (result,) = rich_outputs(cell_with(rich, "impl Rich for Temperature"), ("execute_result",))
    assert result.data["text/plain"] == "21.5 °C"
    assert "21.5 °C</span>" in result.data["text/html"]
    (result,) = rich_outputs(cell_with(rich, "struct Swatch"), ("execute_result",))
    assert "background:#8e44ad" in result.data["text/html"]
    cell = cell_with(rich, 'display(&Markdown::new("**first** display"));')
    kinds = [o.output_type for o in rich_outputs(cell)]
    assert kinds == ["display_data", "display_data", "display_data", "execute_result"]


def test_rich_display_updated_from_background_task(rich):
    """update_display_data is not saved as an output of its own: nbclient applies it to the
    display with the same display_id, so the saved display must show the final count."""
    cell = cell_with(rich, "let counter = display(&counter_view(0));")
    displays = rich_outputs(cell, ("display_data",))
    assert len(displays) == 1, displays
    assert displays[0].data["text/plain"] == "counter: 10 / 10"
    assert "<b>10</b> / 10" in displays[0].data["text/html"]
    assert "keeps going" in stream(cell)
    assert "with 10" in stream(cell_with(rich, "let final_count = ticker.await"))


def test_rich_progress_bar_is_one_display(rich):
    cell = cell_with(rich, "ProgressBar::with_label(100")
    displays = rich_outputs(cell)
    assert len(displays) == 1, f"{len(displays)} outputs for one progress bar"
    assert "100/100" in displays[0].data["text/plain"]
    assert 'value="100" max="100"' in displays[0].data["text/html"]
    assert "done: 100 steps" in stream(cell)


def test_rich_clear_output(rich):
    cell = cell_with(rich, "rustloop::clear_output(true);")
    displays = rich_outputs(cell)
    assert len(displays) == 1, f"{len(displays)} frames left after clear_output"
    assert "frame 8</text>" in displays[0].data["image/svg+xml"]
    out = stream(cell)
    assert "then cleared" not in out
    assert "animation finished" in out


# ------------------------------------------------------------------ widgets

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def widgets_nb():
    return notebook("widgets.ipynb")


def saved_widgets(nb):
    """The widget models nbclient saved in the notebook metadata, by model id."""
    return nb.metadata["widgets"][WIDGET_STATE]["state"]


def test_widgets_notebook_saves_widget_state(widgets_nb):
    """nbclient records every widget's comm_open and updates in the notebook metadata, so the
    saved notebook shows the widgets (with their final values) without a kernel."""
    models = saved_widgets(widgets_nb)
    names = [m["model_name"] for m in models.values()]
    for name in ("IntSliderModel", "ButtonModel", "LabelModel", "OutputModel", "VBoxModel",
                 "HBoxModel", "IntProgressModel", "HTMLModel", "LayoutModel"):
        assert name in names, f"{name} not saved; saved {sorted(set(names))}"
    # every displayed view refers to a saved model
    views = all_data(widgets_nb, WIDGET_VIEW)
    assert len(views) == 3, views
    assert all(v["model_id"] in models for v in views)
    progress = [m["state"] for m in models.values() if m["model_name"] == "IntProgressModel"]
    assert progress[0]["value"] == 12 and progress[0]["bar_style"] == "success"


def test_widgets_dashboard_task_was_steered_and_stopped(widgets_nb):
    out = stream(cell_with(widgets_nb, "stop.click();"))
    assert re.fullmatch(r"stopped after \d+ ticks\n", out), out
    models = saved_widgets(widgets_nb).values()
    chart = [m["state"] for m in models if m["model_name"] == "OutputModel"][0]
    (shown,) = chart["outputs"]
    assert "<polyline" in shown["data"]["image/svg+xml"]
    labels = [m["state"]["value"] for m in models if m["model_name"] == "LabelModel"]
    assert out.strip() in labels


def test_widgets_downloads_and_interact(widgets_nb):
    assert stream(cell_with(widgets_nb, "downloads.join_next()")) == "78000 bytes in 12 files\n"
    assert stream(cell_with(widgets_nb, "b.set_value(9);")) == "<b>3 + 9 = 12</b>\n"
