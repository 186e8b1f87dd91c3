"""rustloop behind Jupyter Kernel Gateway, driven the way JupyterLab's `--gateway-url` does it:
kernels are created, interrupted, restarted and deleted over REST, and every message goes
through `/api/kernels/<id>/channels` as a websocket (JSON text frames, one per message).

One gateway (a real `jupyter kernelgateway` process on 127.0.0.1, a free port) serves the
whole module; it finds rustloop through the JUPYTER_PATH conftest.py set up.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket

from conftest import (
    CELL_TIMEOUT,
    FIRST_CELL_TIMEOUT,
    KERNEL_NAME,
    free_port,
    rustloop_bin,
    stop_server,
)
from processes import processes, session_of, wait_for


class Gateway:
    """A running `jupyter kernelgateway` and a small REST client for it."""

    def __init__(self, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        jupyter = Path(sys.executable).with_name("jupyter")
        self.proc = subprocess.Popen(
            [str(jupyter), "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1",
             f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.port_retries=0",
             f"--KernelGatewayApp.default_kernel_name={KERNEL_NAME}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )
        ready = wait_for(self._answers, 60, 0.2)
        assert ready, f"the gateway did not answer on {self.base}: {Path(log_path).read_text()}"

    def _answers(self):
        assert self.proc.poll() is None, "the gateway exited"
        try:
            return self.rest("GET", "/api")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def rest(self, method, path, body=None, timeout=120):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def start_kernel(self):
        status, model = self.rest("POST", "/api/kernels", {"name": KERNEL_NAME})
        assert status == 201, (status, model)
        return model["id"]

    def kernel_pid(self, kernel_id):
        """The rustloop kernel process the gateway started for `kernel_id` (found by the
        connection file named on its command line)."""
        binary = os.path.realpath(rustloop_bin())
        for pid, stat in processes().items():
            if stat["ppid"] != self.proc.pid:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                exe = os.path.realpath(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe == binary and f"kernel-{kernel_id}.json" in cmdline:
                return pid
        return None

    def stop(self):
        stop_server(self.proc, self.log)


class Channels:
    """The kernel's websocket: sends requests, keeps every message received in order."""

    def __init__(self, gateway, kernel_id):
        url = f"ws://127.0.0.1:{gateway.port}/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(url, timeout=30)
        self.session = uuid.uuid4().hex
        self.received = []

    def send(self, channel, msg_type, content):
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                       "username": "test", "version": "5.3",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel,
        }))
        return msg_id

    def wait(self, predicate, timeout):
        """The first message received (before or now) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.received[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.received)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching message in {timeout} s; got {self.received[-5:]}"
            self.ws.settimeout(remaining)
            msg = json.loads(self.ws.recv())
            msg["received_at"] = time.monotonic()
            self.received.append(msg)

    def execute(self, code, timeout=CELL_TIMEOUT, allow_stdin=False):
        """Sends a cell; returns its msg_id (use `finish` for the reply and outputs)."""
        return self.send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True})

    def finish(self, msg_id, timeout=CELL_TIMEOUT):
        """(execute_reply content, [(msg_type, content)] iopub outputs up to idle, idle msg)."""
        reply = self.wait(lambda m: m["channel"] == "shell"
                          and m["parent_header"].get("msg_id") == msg_id, timeout)
        idle = self.wait(lambda m: m["channel"] == "iopub" and m["msg_type"] == "status"
                         and m["parent_header"].get("msg_id") == msg_id
                         and m["content"]["execution_state"] == "idle", timeout)
        outputs = [(m["msg_type"], m["content"]) for m in self.received
                   if m["channel"] == "iopub" and m["parent_header"].get("msg_id") == msg_id
                   and m["msg_type"] not in ("status", "execute_input")
                   and m["received_at"] <= idle["received_at"]]
        return reply["content"], outputs, idle

    def run(self, code, timeout=CELL_TIMEOUT):
        reply, outputs, _ = self.finish(self.execute(code), timeout)
        return reply, outputs

    def close(self):
        self.ws.close()


def text_of(outputs):
    return "".join(c["text"] for t, c in outputs if t == "stream" and c["name"] == "stdout")


def value_of(outputs):
    return next((c["data"]["text/plain"] for t, c in outputs if t == "execute_result"), None)


def assert_gone(pid, session):
    """The kernel process and every process of its session have ended."""
    assert wait_for(lambda: processes().get(pid) is None, 30), f"kernel {pid} still runs"

    def left():
        return {p: s["comm"] for p, s in session_of(pid).items() if p in session}

    assert wait_for(lambda: not left(), 30), f"left behind: {left()}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("gateway") / "gateway.log")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def kernel_a(gateway):
    """A kernel with a warm evaluator (its first cell may compile tokio on a cold cache)."""
    kernel_id = gateway.start_kernel()
    ch = Channels(gateway, kernel_id)
    reply, outputs = ch.run("let gw_first = 1u8;", timeout=FIRST_CELL_TIMEOUT)
    assert reply["status"] == "ok", (reply, outputs)
    yield kernel_id, ch
    ch.close()


@pytest.mark.timeout(1200)
def test_await_cell_and_task_output_after_the_cell_ended(kernel_a):
    _, ch = kernel_a
    msg_id = ch.execute(
        "let gw_t0 = std::time::Instant::now();\n"
        "tokio::time::sleep(std::time::Duration::from_millis(300)).await;\n"
        "tokio::spawn(async {\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;\n"
        "    println!(\"late from the task\");\n"
        "});\n"
        "gw_t0.elapsed().as_millis() >= 300")
    reply, outputs, idle = ch.finish(msg_id)
    assert reply["status"] == "ok", (reply, outputs)
    assert value_of(outputs) == "true"
    assert "late from the task" not in text_of(outputs)
    late = ch.wait(lambda m: m["channel"] == "iopub" and m["msg_type"] == "stream"
                   and "late from the task" in m["content"]["text"], 60)
    assert late["received_at"] > idle["received_at"]


@pytest.mark.timeout(1200)
def test_input_request_is_answered_over_the_websocket(kernel_a):
    _, ch = kernel_a
    msg_id = ch.execute('let gw_name = rustloop::input("name? ").unwrap();\n'
                        'format!("hello {gw_name}")', allow_stdin=True)
    req = ch.wait(lambda m: m["channel"] == "stdin" and m["msg_type"] == "input_request", 300)
    assert req["parent_header"]["msg_id"] == msg_id
    assert req["content"] == {"prompt": "name? ", "password": False}
    ch.send("stdin", "input_reply", {"value": "Ferris", "status": "ok"})
    reply, outputs, _ = ch.finish(msg_id)
    assert reply["status"] == "ok", (reply, outputs)
    assert value_of(outputs) == '"hello Ferris"'


@pytest.mark.timeout(1200)
def test_interrupt_over_rest_keeps_earlier_state(gateway, kernel_a):
    kernel_id, ch = kernel_a
    reply, _ = ch.run("let gw_kept = 41u32;")
    assert reply["status"] == "ok"
    msg_id = ch.execute("tokio::time::sleep(std::time::Duration::from_secs(60)).await;")
    # the cell is running once its execute_input is out and it had time to compile
    ch.wait(lambda m: m["msg_type"] == "execute_input"
            and m["parent_header"].get("msg_id") == msg_id, 60)
    time.sleep(3)
    sent = time.monotonic()
    status, _ = gateway.rest("POST", f"/api/kernels/{kernel_id}/interrupt")
    assert status == 204
    reply, outputs, idle = ch.finish(msg_id, timeout=60)
    assert reply["status"] == "error", reply
    assert reply["ename"] == "KeyboardInterrupt", reply
    assert idle["received_at"] - sent < 30, "the interrupt did not end the 60 s wait"
    reply, outputs = ch.run("gw_kept + 1")
    assert reply["status"] == "ok", (reply, outputs)
    assert value_of(outputs) == "42"


@pytest.mark.timeout(1800)
def test_two_kernels_at_once_have_separate_state(gateway, kernel_a):
    id_a, ch_a = kernel_a
    id_b = gateway.start_kernel()
    ch_b = Channels(gateway, id_b)
    try:
        assert id_a != id_b
        pid_a, pid_b = gateway.kernel_pid(id_a), gateway.kernel_pid(id_b)
        assert pid_a and pid_b and pid_a != pid_b
        # both run at once: B's first cell and A's cell are in flight together
        first_b = ch_b.execute('let gw_who = "B";', timeout=FIRST_CELL_TIMEOUT)
        reply, _ = ch_a.run('let gw_who = "A";')
        assert reply["status"] == "ok"
        reply, outputs, _ = ch_b.finish(first_b, timeout=FIRST_CELL_TIMEOUT)
        assert reply["status"] == "ok", (reply, outputs)
        assert value_of(ch_a.run("gw_who")[1]) == '"A"'
        assert value_of(ch_b.run("gw_who")[1]) == '"B"'
        # B never saw A's earlier variables
        reply, _ = ch_b.run("gw_kept")
        assert reply["status"] == "error"
    finally:
        ch_b.close()
        gateway.rest("DELETE", f"/api/kernels/{id_b}")


@pytest.mark.timeout(1800)
def test_restart_and_delete_over_rest_leave_no_process(gateway):
    kernel_id = gateway.start_kernel()
    ch = Channels(gateway, kernel_id)
    reply, _ = ch.run("let gw_before_restart = 5u8;", timeout=FIRST_CELL_TIMEOUT)
    assert reply["status"] == "ok"
    # a process started by a cell belongs to the kernel's session and must end with it
    reply, _ = ch.run('let gw_child = std::process::Command::new("sleep").arg("600")'
                      ".spawn().unwrap().id();")
    assert reply["status"] == "ok"
    old_pid = gateway.kernel_pid(kernel_id)
    assert old_pid
    old_session = set(session_of(old_pid))
    assert any(processes()[p]["comm"] == "sleep" for p in old_session), old_session
    ch.close()

    status, model = gateway.rest("POST", f"/api/kernels/{kernel_id}/restart")
    assert status == 200, (status, model)
    assert_gone(old_pid, old_session)
    new_pid = gateway.kernel_pid(kernel_id)
    assert new_pid and new_pid != old_pid
    ch = Channels(gateway, kernel_id)
    reply, _ = ch.run("gw_before_restart", timeout=FIRST_CELL_TIMEOUT)
    assert reply["status"] == "error", "state survived a restart"
    reply, outputs = ch.run("let gw_after = 2u8; gw_after * 3")
    assert value_of(outputs) == "6", (reply, outputs)
    new_session = set(session_of(new_pid))
    ch.close()

    status, _ = gateway.rest("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    assert_gone(new_pid, new_session)
    status, _ = gateway.rest("GET", f"/api/kernels/{kernel_id}")
    assert status == 404
