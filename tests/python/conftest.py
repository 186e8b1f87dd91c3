"""Shared fixtures: the release-built rustloop binary, a kernelspec installed into a private
Jupyter path, and helpers to start kernels and run cells through jupyter_client.

The binary comes from $RUSTLOOP_BIN, else from the cargo target directory
($CARGO_TARGET_DIR, default ~/.cache/rustloop/target)/release/rustloop. `tests/run` builds it.
"""

import os
import queue
import socket
import subprocess
import tempfile
import time
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


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
