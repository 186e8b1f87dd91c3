"""The kernel's life with jupyter_client (DESIGN.md sections 6 and 7): control and heartbeat
while a cell runs, shutdown, restart, SIGINT, the tcp and ipc transports, and no process left
behind when the kernel ends or is killed.

Tests that shut the kernel down, kill it or restart it take a `fresh_kernel` or start their own.
"""

import os
import signal
import time

import pytest
from jupyter_client.manager import KernelManager

from conftest import (
    FIRST_CELL_TIMEOUT,
    KERNEL_NAME,
    assert_responsive,
    control_request,
    result_of,
    shell_replies_until,
    stdout_of,
)
from processes import assert_all_gone, descendants, evaluation_pids, kernel_pid, snapshot, wait_for


# --------------------------------------------------------------------------------------------
# (b) control and heartbeat while a long cell runs


@pytest.mark.timeout(120)
def test_control_answers_during_long_cell(warm):
    k = warm
    kc = k.kc
    msg_id = kc.execute(
        "tokio::time::sleep(std::time::Duration::from_secs(10)).await;\n"
        'println!("slept the whole time");'
    )
    time.sleep(1.5)  # let the cell start waiting

    reply, took = control_request(kc, "kernel_info_request", timeout=9)
    assert reply["msg_type"] == "kernel_info_reply"
    assert reply["content"]["status"] == "ok"
    assert took < 3.0, f"kernel_info on control took {took:.2f}s during a running cell"

    assert kc.hb_channel.is_beating(), "heartbeat stopped while a cell runs"

    t0 = time.monotonic()
    reply, took = control_request(kc, "interrupt_request", timeout=9)
    assert reply["msg_type"] == "interrupt_reply"
    assert reply["content"]["status"] == "ok"
    assert took < 3.0, f"interrupt_request took {took:.2f}s to be answered"

    shell = shell_replies_until(kc, msg_id, 30)[-1]
    elapsed = time.monotonic() - t0
    assert shell["content"]["status"] == "error"
    assert shell["content"]["ename"] == "KeyboardInterrupt"
    assert elapsed < 5.0, f"cell ended {elapsed:.2f}s after the interrupt"
    outputs = k.collect_iopub(msg_id)
    assert "slept the whole time" not in stdout_of(outputs)
    assert_responsive(k)


@pytest.mark.timeout(180)
def test_shutdown_on_control_during_long_cell(fresh_kernel):
    k = fresh_kernel
    kc = k.kc
    content, _ = k.execute("let a = 1;")
    assert content["status"] == "ok", content
    kpid = kernel_pid(k)
    before = snapshot(descendants(kpid))
    assert before, "the kernel has no child processes to check"

    kc.execute("tokio::time::sleep(std::time::Duration::from_secs(10)).await;")
    time.sleep(1.5)
    before = snapshot(descendants(kpid) | set(before))

    reply, took = control_request(kc, "shutdown_request", {"restart": False}, timeout=9)
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is False
    assert took < 5.0, f"shutdown_reply took {took:.2f}s"

    assert wait_for(lambda: not k.km.is_alive(), 20), "kernel process still alive after shutdown"
    assert_all_gone(before, "behind by the kernel")


# --------------------------------------------------------------------------------------------
# (i) transports


def test_tcp_transport(warm):
    info = warm.km.get_connection_info()
    assert info["transport"] == "tcp"
    content, outputs = warm.execute('println!("over tcp");')
    assert content["status"] == "ok"
    assert "over tcp" in stdout_of(outputs)


@pytest.mark.timeout(300)
def test_ipc_transport(tmp_path):
    km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc")
    km.ip = str(tmp_path / "kernel-ipc")
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        info = km.get_connection_info()
        assert info["transport"] == "ipc"
        # the sockets are files next to km.ip
        assert any(p.name.startswith("kernel-ipc") for p in tmp_path.iterdir())

        msg_id = kc.execute('println!("over ipc");\n40 + 2')
        reply = kc.get_shell_msg(timeout=FIRST_CELL_TIMEOUT)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=FIRST_CELL_TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
        stdout, result = "", None
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                stdout += msg["content"]["text"]
            if msg["msg_type"] == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert "over ipc" in stdout
        assert result == "42"
        assert kc.hb_channel.is_beating()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


# --------------------------------------------------------------------------------------------
# (j) SIGINT


@pytest.mark.timeout(120)
def test_sigint_interrupts_await(warm):
    k = warm
    kc = k.kc
    content, _ = k.execute("let before_sigint = 11u32;")
    assert content["status"] == "ok"
    msg_id = kc.execute("tokio::time::sleep(std::time::Duration::from_secs(10)).await;")
    time.sleep(1.5)
    t0 = time.monotonic()
    os.kill(kernel_pid(k), signal.SIGINT)
    reply = shell_replies_until(kc, msg_id, 30)[-1]["content"]
    took = time.monotonic() - t0
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    assert took < 5.0, f"SIGINT took {took:.2f}s to end the cell"
    k.collect_iopub(msg_id)
    assert k.km.is_alive()
    content, outputs = k.execute("before_sigint")
    assert result_of(outputs) == "11"


# --------------------------------------------------------------------------------------------
# section 7: no orphaned evaluation processes


@pytest.mark.timeout(180)
def test_no_orphans_after_kernel_killed(fresh_kernel):
    k = fresh_kernel
    assert wait_for(lambda: evaluation_pids(k), 60), "no evaluation process appeared"
    snap = snapshot(descendants(kernel_pid(k)))
    k.km.provisioner.process.send_signal(signal.SIGKILL)
    assert wait_for(lambda: not k.km.is_alive(), 10)
    assert_all_gone(snap, "after SIGKILL of the kernel")


@pytest.mark.timeout(300)
def test_restart_leaves_no_orphans(fresh_kernel):
    k = fresh_kernel
    content, _ = k.execute("let before_restart = 1;")
    assert content["status"] == "ok"
    old_pid = kernel_pid(k)
    snap = snapshot(descendants(old_pid) | {old_pid})
    k.km.restart_kernel(now=False)
    assert kernel_pid(k) != old_pid
    assert_all_gone(snap, "after restart")
    k.kc.wait_for_ready(timeout=60)
    k.first = True
    content, outputs = k.execute("before_restart")
    assert content["status"] == "error", "a variable survived a kernel restart"
    content, outputs = k.execute("1 + 1")
    assert result_of(outputs) == "2"


