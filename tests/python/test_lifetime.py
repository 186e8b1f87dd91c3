"""No process outlives the kernel (issue 13): kill -9 of the kernel, or a shutdown_request,
while a cell is still compiling (a slow const evaluation) leaves no cargo, rustc, rustc wrapper
or evaluation process behind, on the fast lane and in evcxr.
"""

import os
import signal
import time

import pytest

from conftest import Kernel
from processes import assert_all_gone, kernel_pid, session_of, wait_for



SLOW_CONST = """
const fn spin(n: u64) -> u64 {
    let mut i = 0;
    let mut x = 0u64;
    while i < n {
        x = x.wrapping_mul(31).wrapping_add(i);
        i += 1;
    }
    x
}
#[allow(long_running_const_eval)]
const SLOW: u64 = spin(40_000_000_000);
"""

# The fast lane compiles a cell without `let` while evcxr warms up; a `let` goes to evcxr.
SLOW_CELLS = {"fast lane": SLOW_CONST + "SLOW", "evcxr": SLOW_CONST + "let slow = SLOW;"}


def build_processes(kpid):
    return {p: s["comm"] for p, s in session_of(kpid).items()
            if s["comm"] in ("cargo", "rustc") or s["comm"].startswith("rustloop")}


def start_slow_compile(k, cell):
    kpid = kernel_pid(k)
    k.kc.execute(cell)
    assert wait_for(lambda: "rustc" in build_processes(kpid).values(), 120, 0.2), (
        f"no rustc appeared: {build_processes(kpid)}"
    )
    time.sleep(1.0)  # well inside the const evaluation
    snap = session_of(kpid)
    assert any(s["comm"] == "cargo" for s in snap.values())
    return kpid, snap


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", list(SLOW_CELLS))
def test_kill_9_during_slow_compile_leaves_nothing(path):
    k = Kernel()
    try:
        if path == "evcxr":
            k.execute("let warm = 1;")
        kpid, snap = start_slow_compile(k, SLOW_CELLS[path])
        os.kill(kpid, signal.SIGKILL)
        assert_all_gone(snap, "after kill -9 of the kernel")
        assert session_of(kpid) == {}
    finally:
        try:
            k.shutdown()
        except Exception:
            pass


@pytest.mark.timeout(300)
def test_shutdown_during_slow_compile_leaves_nothing():
    k = Kernel()
    try:
        kpid, snap = start_slow_compile(k, SLOW_CELLS["fast lane"])
        msg = k.kc.session.msg("shutdown_request", {"restart": False})
        k.kc.control_channel.send(msg)
        assert wait_for(lambda: not k.km.is_alive(), 20)
        assert_all_gone(snap, "after shutdown_request")
        assert session_of(kpid) == {}
    finally:
        try:
            k.kc.stop_channels()
            k.km.shutdown_kernel(now=True)
        except Exception:
            pass


@pytest.mark.timeout(300)
def test_processes_started_by_cells_die_with_the_kernel():
    """A cell's own child (here `sleep`) is in the evaluation process's group: it goes too."""
    k = Kernel()
    try:
        content, _ = k.execute(
            'std::process::Command::new("sleep").arg("1000").spawn().unwrap().id()'
        )
        assert content["status"] == "ok", content
        kpid = kernel_pid(k)
        assert wait_for(lambda: "sleep" in {s["comm"] for s in session_of(kpid).values()}, 10)
        snap = session_of(kpid)
        os.kill(kpid, signal.SIGKILL)
        assert_all_gone(snap, "after kill -9 of the kernel")
    finally:
        try:
            k.shutdown()
        except Exception:
            pass
