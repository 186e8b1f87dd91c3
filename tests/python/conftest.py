"""Shared fixtures: the release-built rustloop binary, a kernelspec installed into a private
Jupyter path, and helpers to start kernels and run cells through jupyter_client.

The binary comes from $RUSTLOOP_BIN, else from the cargo target directory
($CARGO_TARGET_DIR, default ~/.cache/rustloop/target)/release/rustloop. `tests/run` builds it.
"""

import json
import os
import queue
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parents[2]


def rustloop_bin() -> Path:
    if os.environ.get("RUSTLOOP_BIN"):
        return Path(os.environ["RUSTLOOP_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/rustloop/target"))
    return Path(target) / "release" / "rustloop"


# One private Jupyter data dir for the whole test session, holding the rustloop kernelspec.
_JUPYTER_PREFIX = tempfile.mkdtemp(prefix="rustloop-tests-")
subprocess.run(
    [str(rustloop_bin()), "install", "--prefix", _JUPYTER_PREFIX, "--no-prebuild"],
    check=True,
    stdout=subprocess.DEVNULL,
)
os.environ["JUPYTER_PATH"] = os.path.join(_JUPYTER_PREFIX, "share", "jupyter")
KERNEL_NAME = "rustloop"

# The first cell of a session may compile tokio on a cold cache (about a minute on 2 cores).
FIRST_CELL_TIMEOUT = float(os.environ.get("RUSTLOOP_FIRST_CELL_TIMEOUT", "900"))
CELL_TIMEOUT = float(os.environ.get("RUSTLOOP_CELL_TIMEOUT", "300"))


class Kernel:
    """A started rustloop kernel with a blocking client."""

    def __init__(self, log=None):
        """`log`: a file that receives the kernel's log (at info level)."""
        self.km = KernelManager(kernel_name=KERNEL_NAME)
        if log is None:
            self.km.start_kernel()
        else:
            self.km.start_kernel(
                env={**os.environ, "RUSTLOOP_LOG": "rustloop=info,zeromq::codec=warn"}, stderr=log
            )
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.first = True

    def execute(self, code, timeout=None, allow_stdin=False, stop_on_error=True, **kw):
        """Runs a cell; returns (reply content, [(msg_type, content), ...] iopub outputs)."""
        if timeout is None:
            timeout = FIRST_CELL_TIMEOUT if self.first else CELL_TIMEOUT
        self.first = False
        msg_id = self.kc.execute(
            code, allow_stdin=allow_stdin, stop_on_error=stop_on_error, **kw
        )
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        outputs = self.collect_iopub(msg_id, timeout=timeout)
        return reply["content"], outputs

    def collect_iopub(self, msg_id, timeout=CELL_TIMEOUT):
        """iopub messages of one request until its idle status (exclusive)."""
        outputs = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    return outputs
                continue
            if msg["msg_type"] == "execute_input":
                continue
            outputs.append((msg["msg_type"], msg["content"]))

    def drain_iopub(self, seconds=0.2):
        """Everything on iopub for `seconds` (for output that arrives between cells)."""
        msgs = []
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return msgs
            try:
                msgs.append(self.kc.get_iopub_msg(timeout=remaining))
            except queue.Empty:
                return msgs

    def shutdown(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def stop_server(proc, log=None):
    """Stops a process the tests started (SIGTERM, then SIGKILL after 30 s) and closes its log."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if log is not None:
        log.close()


def free_ports(ip, n):
    """`n` distinct TCP ports on `ip` that were free a moment ago."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((ip, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports("127.0.0.1", 1)[0]


def connection_file(tmp_path, ip, ports=None):
    """A connection file for a kernel started by hand, as a remote launcher writes it."""
    ports = ports or free_ports("127.0.0.1", 5)
    info = dict(zip(["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"], ports))
    info.update(ip=ip, transport="tcp", key=uuid.uuid4().hex, signature_scheme="hmac-sha256",
                kernel_name="rustloop")
    path = tmp_path / f"kernel-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(info))
    return path, info


def shell_replies_until(kc, msg_id, timeout=CELL_TIMEOUT):
    """All shell messages up to and including the reply to msg_id."""
    got = []
    end = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.1, end - time.monotonic()))
        got.append(msg)
        if msg["parent_header"].get("msg_id") == msg_id:
            return got


def shell_reply(kc, msg_id, timeout=CELL_TIMEOUT):
    """The shell reply to msg_id (earlier shell messages are dropped)."""
    return shell_replies_until(kc, msg_id, timeout)[-1]


def control_request(kc, msg_type, content=None, timeout=30):
    """Sends a request on the control channel; returns (reply, seconds until the reply)."""
    msg = kc.session.msg(msg_type, content or {})
    t0 = time.monotonic()
    kc.control_channel.send(msg)
    while True:
        reply = kc.get_control_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply, time.monotonic() - t0


def assert_responsive(k):
    """kernel_info on shell and a trivial cell both still work."""
    k.kc.kernel_info()
    reply = k.kc.get_shell_msg(timeout=30)
    while reply["msg_type"] != "kernel_info_reply":
        reply = k.kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["implementation"] == "rustloop"
    content, outputs = k.execute("20 + 22")
    assert content["status"] == "ok", content
    assert result_of(outputs) == "42"


# What tokio says when a cell runs outside the runtime: never acceptable in a cell's output.
NO_REACTOR = "no reactor running"


def ok(k, code, **kw):
    """Runs a cell that must succeed; returns its outputs."""
    content, outputs = k.execute(code, **kw)
    assert content["status"] == "ok", f"cell failed:\n{code}\n-> {content}\noutputs: {outputs}"
    text = stdout_of(outputs) + stderr_of(outputs)
    assert NO_REACTOR not in text, text
    return outputs


def value(k, code, **kw):
    """text/plain of a cell's execute_result."""
    outputs = ok(k, code, **kw)
    res = result_of(outputs)
    assert res is not None, f"no execute_result for:\n{code}\noutputs: {outputs}"
    return res


def stdout_of(outputs):
    return "".join(c["text"] for t, c in outputs if t == "stream" and c["name"] == "stdout")


def stderr_of(outputs):
    return "".join(c["text"] for t, c in outputs if t == "stream" and c["name"] == "stderr")


def result_of(outputs, mime="text/plain"):
    results = [c["data"][mime] for t, c in outputs if t == "execute_result"]
    return results[0] if results else None


@pytest.fixture(scope="module")
def kernel():
    """One kernel per test module (cells in a module share state, like a notebook)."""
    k = Kernel()
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def warm(kernel):
    """The module kernel after its first (slow) cell."""
    content, _ = kernel.execute("let warm_marker = 1u8;", timeout=FIRST_CELL_TIMEOUT)
    assert content["status"] == "ok", content
    return kernel


@pytest.fixture
def fresh_kernel():
    """A kernel of its own, for tests that crash, restart or shut it down."""
    k = Kernel()
    yield k
    try:
        k.shutdown()
    except Exception:
        pass


@pytest.fixture
def logged(tmp_path):
    """A kernel whose log (info level) can be read with `log_of`."""
    path = tmp_path / "kernel.log"
    with open(path, "w") as log:
        k = Kernel(log=log)
        k.log_path = path
        yield k
        try:
            k.shutdown()
        except Exception:
            pass


def log_of(k):
    return k.log_path.read_text()


def wait_until_warm(k):
    """Until evcxr has warmed up (the lane is closed from then on)."""
    deadline = time.monotonic() + FIRST_CELL_TIMEOUT
    while "evaluator warm after" not in log_of(k) and time.monotonic() < deadline:
        time.sleep(0.2)
