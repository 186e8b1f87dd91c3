"""The fast lane: cells that arrive while evcxr warms up run at once, compiled by rustloop
against the cached tokio and runtime, and their definitions reach evcxr afterwards.

Each test starts a kernel and sends its cells immediately, as `jupyter nbconvert --execute` or
a user re-running a notebook does. Which path ran a cell is read from the kernel's log.
"""

import threading
import time

import pytest

from conftest import (
    FIRST_CELL_TIMEOUT,
    Kernel,
    log_of,
    result_of,
    stderr_of,
    stdout_of,
    wait_until_warm,
)


@pytest.fixture(scope="module", autouse=True)
def warm_cache():
    """The lane needs a cache slot that has built tokio and the runtime once."""
    k = Kernel()
    try:
        content, _ = k.execute("1", timeout=FIRST_CELL_TIMEOUT)
        assert content["status"] == "ok", content
    finally:
        k.shutdown()


def fast_cells(k):
    return [
        line.split("fast lane: cell ")[1].split()[0]
        for line in log_of(k).splitlines()
        if "fast lane: cell " in line
    ]


def test_first_cells_run_during_warm_up_and_definitions_carry_over(logged):
    k = logged
    t0 = time.monotonic()
    content, outputs = k.execute(
        "use std::time::Duration;\n"
        "#[derive(Debug)]\n"
        "struct Point { x: i32, y: i32 }\n"
        "async fn double_later(n: i32) -> i32 {\n"
        "    tokio::time::sleep(Duration::from_millis(50)).await;\n"
        "    n * 2\n"
        "}\n"
        'println!("start");\n'
        'eprintln!("to stderr");\n'
        "let p = Point { x: double_later(5).await, y: 0 };\n"
        "let d: Duration = Duration::from_millis(1);\n"
        "double_later(21).await"
    )
    first = time.monotonic() - t0
    assert content["status"] == "ok", content
    assert stdout_of(outputs) == "start\n"
    assert stderr_of(outputs) == "to stderr\n"
    assert result_of(outputs) == "42"
    # evcxr cannot be warm yet (it starts with the kernel and needs over a second): the first
    # cell is the lane's, and so are its `let`s, kept in the variable store.
    assert fast_cells(k) == ["[1]"], log_of(k)

    # This one may be the lane's or evcxr's (evcxr warms up in a second or two on a warm
    # slot); either way it sees the first cell's definitions.
    content, outputs = k.execute(
        "tokio::spawn(async { tokio::time::sleep(Duration::from_millis(100)).await; "
        'println!("task done"); });\n'
        "Point { x: double_later(1).await, y: 3 }"
    )
    assert content["status"] == "ok", content
    assert result_of(outputs) == "Point { x: 2, y: 3 }"
    print(f"\nfirst cell {first:.2f}s; fast-lane cells: {fast_cells(k)}")

    # Once evcxr is warm it reads the lane's values of the lane's types (the definitions it
    # was handed are the same, so the layout is).
    wait_until_warm(k)
    lane = fast_cells(k)
    content, outputs = k.execute("format!(\"{:?} {:?}\", p, d)")
    assert content["status"] == "ok", content
    assert result_of(outputs) == '"Point { x: 10, y: 0 } 1ms"'
    assert fast_cells(k) == lane, "the lane closed once evcxr was warm"


def test_lane_cells_fail_interrupt_and_warn_like_any_cell(logged):
    k = logged
    # Does not compile on the lane: evcxr runs it and reports the error as for any cell.
    content, outputs = k.execute("no_such_function().await;")
    assert content["status"] == "error"
    assert content["ename"] == "CompilationError", content
    assert "no_such_function" in content["evalue"], content
    assert "goes to evcxr" in log_of(k)

    # The lane closed with evcxr warm; a new kernel gets a new lane.
    log2 = k.log_path.with_name("k2.log")
    with open(log2, "w") as log:
        k2 = Kernel(log=log)
    k2.log_path = log2
    try:
        content, outputs = k2.execute('panic!("lane boom");')
        assert content["status"] == "error"
        assert content["ename"] == "panic", content
        assert "lane boom" in content["evalue"]

        # rustc's warning for a future that is never awaited
        content, outputs = k2.execute("async fn lazy() {}\nlazy();")
        assert content["status"] == "ok", content
        assert "futures do nothing unless you `.await`" in stderr_of(outputs)

        # an interrupt cancels the `.await` at once, after the cell compiled
        threading.Timer(1.5, k2.km.interrupt_kernel).start()
        t0 = time.monotonic()
        content, outputs = k2.execute(
            'println!("waiting");\ntokio::time::sleep(std::time::Duration::from_secs(60)).await;'
        )
        assert content["status"] == "error"
        assert content["ename"] == "KeyboardInterrupt", content
        assert time.monotonic() - t0 < 10
        assert stdout_of(outputs) == "waiting\n"
        # evcxr is warm within seconds on a warm slot, so only the first cells are sure to
        # have been the lane's; the behaviour above is the same on either path
        assert fast_cells(k2)[:1] == ["[1]"], log_of(k2)

        # the warm-up finished meanwhile; later cells and the lane's `lazy` work in evcxr
        content, outputs = k2.execute("lazy().await;\nlet v = vec![1, 2];\nv.len()")
        assert content["status"] == "ok", content
        assert result_of(outputs) == "2"
    finally:
        k2.shutdown()


def test_lane_cell_that_exits_restarts_the_evaluator(logged):
    k = logged
    content, outputs = k.execute("std::process::exit(3);")
    assert content["status"] == "error"
    assert content["ename"] == "EvaluatorExited", content
    assert fast_cells(k) == ["[1]"], log_of(k)
    assert k.km.is_alive()
    content, outputs = k.execute("let after = 7;\nafter * 6")
    assert content["status"] == "ok", content
    assert result_of(outputs) == "42"


def test_dep_as_first_cell_runs_on_the_lane_and_reaches_evcxr(logged):
    """`:dep` of a crate cargo already has (resolved offline) does not wait for the warm-up."""
    k = logged
    k.execute(':dep itoa = "1"', timeout=FIRST_CELL_TIMEOUT)  # the cache has itoa from here on
    k.shutdown()
    with open(k.log_path, "w") as log:
        k2 = Kernel(log=log)
    k2.log_path = k.log_path
    try:
        t0 = time.monotonic()
        content, _ = k2.execute(':dep itoa = "1"')
        first = time.monotonic() - t0
        assert content["status"] == "ok", content
        content, outputs = k2.execute("let s = itoa::Buffer::new().format(5u8).to_owned();")
        assert content["status"] == "ok", content
        assert fast_cells(k2)[:2] == ["[1]", "[2]"], log_of(k2)
        print(f"\nfirst cell `:dep itoa` on the lane: {first:.2f}s")
        wait_until_warm(k2)
        # evcxr learned the dependency with the lane's definitions
        content, outputs = k2.execute("(s.clone(), itoa::Buffer::new().format(77u8).to_owned())")
        assert content["status"] == "ok", content
        assert result_of(outputs) == '("5", "77")'
    finally:
        k2.shutdown()


@pytest.mark.timeout(1500)
def test_a_dep_that_rebuilds_the_runtime_names_what_was_lost(tmp_path, monkeypatch):
    """`tokio-test` turns on tokio's `test-util`, so `:dep tokio-test` rebuilds the runtime
    library and restarts the evaluation process. After earlier cells of the fast lane, the lane
    leaves such a cell to evcxr's path, which says which variables were lost (the lane lost them
    without a word). A cache of its own: the rebuilt tokio would otherwise make every later
    kernel of the suite build tokio again."""
    monkeypatch.setenv("RUSTLOOP_CACHE_DIR", str(tmp_path / "cache"))
    k = Kernel()
    try:
        content, _ = k.execute("1", timeout=FIRST_CELL_TIMEOUT)  # builds the new cache
        assert content["status"] == "ok", content
    finally:
        k.shutdown()
    log = tmp_path / "kernel.log"
    with open(log, "w") as f:
        k = Kernel(log=f)
    k.log_path = log
    try:
        # Sent at once, as Run All sends them: the first is the lane's.
        cells = ["let kept_x = 5u8;", ':dep tokio-test = "0.4"', "kept_x + 1"]
        ids = [k.kc.execute(code) for code in cells]
        outputs = [k.collect_iopub(i, timeout=FIRST_CELL_TIMEOUT) for i in ids]
        assert fast_cells(k)[:1] == ["[1]"], log_of(k)
        said = stderr_of(outputs[1])
        assert "the runtime library was rebuilt" in said, outputs[1]
        assert "These variables were lost: kept_x." in said, said
        assert "exit status" not in said, said
        errors = [c for t, c in outputs[2] if t == "error"]
        assert errors and "kept_x" in errors[0]["evalue"], outputs[2]
        # The kernel goes on, with the new crate.
        content, outputs = k.execute("let ok_now = 2u8;\nok_now * 21")
        assert content["status"] == "ok", content
        assert result_of(outputs) == "42"
    finally:
        k.shutdown()
