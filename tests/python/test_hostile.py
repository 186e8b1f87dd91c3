"""Hostile input through real sockets (loopback only): nothing a client sends may crash the
kernel, replay a request or leave processes behind (issue 13). `test_lifetime.py` kills the
kernel in the middle of a build.

Every attack is followed by `healthy()`: the kernel is alive, answers kernel_info on shell and
control, its heartbeat echoes, `1 + 1` runs, its evaluation process is the same one as before
(nothing was restarted) and no process of its session has lost its parent.
"""

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import zmq
from jupyter_client.session import Session

from conftest import Kernel, result_of
from processes import evaluation_pids, kernel_pid, orphans, wait_for

GREETING = bytes([0xFF] + [0] * 8 + [0x7F, 3, 0]) + b"NULL".ljust(20, b"\0") + bytes(32)
SOCKET_TYPE = {"shell": b"DEALER", "control": b"DEALER", "stdin": b"DEALER",
               "iopub": b"SUB", "hb": b"REQ"}
CHANNELS = list(SOCKET_TYPE)
LYING = {"4 EiB": 1 << 62, "64 GiB": 64 << 30, "limit + 1": 256 * 1024 * 1024 + 1}


# --------------------------------------------------------------------------------------------
# fixtures and checks


@pytest.fixture(scope="module")
def hk(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("hostile") / "kernel.log"
    log = open(log_path, "w")
    k = Kernel(log=log)
    k.log_path = log_path
    content, outputs = k.execute("let mut kept = 40;")
    assert content["status"] == "ok", content
    assert wait_for(lambda: len(evaluation_pids(k)) == 1, 30)
    k.evaluator = evaluation_pids(k)
    yield k
    k.shutdown()
    log.close()


def log_text(k):
    return Path(k.log_path).read_text(errors="replace")


def heartbeat_ok(k, timeout=5):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    s.connect(f"tcp://127.0.0.1:{k.km.hb_port}")
    try:
        s.send(b"ping")
        return s.poll(timeout * 1000) and s.recv() == b"ping"
    finally:
        s.close()


def healthy(k):
    assert k.km.is_alive(), "the kernel died"
    reply = k.kc.kernel_info(reply=True, timeout=10)
    assert reply["content"]["status"] == "ok"
    # control too (jupyter_client has no helper for it: a raw request)
    msg = k.kc.session.msg("kernel_info_request", {})
    k.kc.control_channel.send(msg)
    got = k.kc.control_channel.get_msg(timeout=10)
    while got["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
        got = k.kc.control_channel.get_msg(timeout=10)
    assert got["content"]["status"] == "ok"
    assert heartbeat_ok(k)
    content, outputs = k.execute("1 + 1")
    assert content["status"] == "ok", content
    assert result_of(outputs) == "2"
    content, outputs = k.execute("kept + 2")
    assert result_of(outputs) == "42", "the evaluation process lost its state"
    assert evaluation_pids(k) == k.evaluator, "the evaluation process was replaced"
    assert orphans(kernel_pid(k)) == {}


def port(k, channel):
    return getattr(k.km, f"{channel}_port")


def connect(k, channel):
    s = socket.create_connection(("127.0.0.1", port(k, channel)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_by_peer(s, timeout=10):
    """True once the kernel closes this connection (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def ready(socket_type):
    body = b"\x05READY\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return bytes([0x04, len(body)]) + body


def long_header(length, more=False):
    return bytes([0x02 | int(more)]) + length.to_bytes(8, "big")


# --------------------------------------------------------------------------------------------
# 1. lying frame lengths on every socket


@pytest.mark.timeout(300)
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("claim", list(LYING))
@pytest.mark.parametrize("when", ["in the handshake", "after the handshake"])
def test_lying_frame_length(hk, channel, claim, when):
    s = connect(hk, channel)
    s.sendall(GREETING)
    assert len(recv_exactly(s, 64)) == 64, "no greeting from the kernel"
    if when == "after the handshake":
        s.sendall(ready(SOCKET_TYPE[channel]))
        # the kernel's READY
        head = recv_exactly(s, 2)
        assert head[0] == 0x04
        recv_exactly(s, head[1])
    s.sendall(long_header(LYING[claim]) + b"a few bytes")
    assert closed_by_peer(s), "the connection with the lying peer stayed open"
    s.close()
    healthy(hk)
    assert re.search(r"frame of \d+ bytes exceeds the limit", log_text(hk))


@pytest.mark.timeout(120)
def test_oversized_multipart_message_closes_only_that_peer(hk):
    """Honest-looking frames that add up to more than the limit, while a good client works."""
    s = connect(hk, "shell")
    s.sendall(GREETING)
    recv_exactly(s, 64)
    s.sendall(ready(b"DEALER"))
    head = recv_exactly(s, 2)
    recv_exactly(s, head[1])
    first = 200 * 1024 * 1024  # honest and under the limit on its own
    s.sendall(long_header(first, more=True))
    chunk = bytes(4 * 1024 * 1024)
    remaining = first
    while remaining:
        n = min(remaining, len(chunk))
        s.sendall(chunk[:n])
        remaining -= n
    # a second frame that takes the message past 256 MiB
    try:
        s.sendall(long_header(100 * 1024 * 1024) + bytes(1024))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_by_peer(s, 30)
    s.close()
    healthy(hk)
    assert "message of at least" in log_text(hk)


# --------------------------------------------------------------------------------------------
# 2. truncated greetings and a flood of connections


@pytest.mark.timeout(120)
@pytest.mark.parametrize("channel", CHANNELS)
def test_truncated_and_bad_greetings(hk, channel):
    held = []
    for data in [GREETING[:10], GREETING[:63], b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b""]:
        s = connect(hk, channel)
        if data:
            s.sendall(data)
        held.append(s)
    # while they hang half-open, everyone else is served
    healthy(hk)
    for s in held:
        s.close()
    healthy(hk)


@pytest.mark.timeout(120)
def test_silent_connections_are_dropped_after_the_handshake_timeout(hk):
    """Half a greeting, or nothing at all: the kernel hangs up after 10 s on every socket."""
    held = []
    for channel in CHANNELS:
        for data in (b"", GREETING[:10], GREETING):
            s = connect(hk, channel)
            if data:
                s.sendall(data)
            held.append(s)
    t0 = time.monotonic()
    for s in held:
        assert closed_by_peer(s, 20), "a silent connection stayed open"
        s.close()
    took = time.monotonic() - t0
    assert 8 < took < 20, f"dropped after {took:.1f} s"
    healthy(hk)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(300)
def test_connection_flood(hk):
    kpid = kernel_pid(hk)
    before = fd_count(kpid)
    flood = []
    for i in range(400):
        s = connect(hk, CHANNELS[i % 5])
        if i % 3 == 0:
            s.sendall(GREETING[: i % 64])
        elif i % 3 == 1:
            s.sendall(GREETING)
        flood.append(s)
    healthy(hk)
    for s in flood:
        s.close()
    assert wait_for(lambda: fd_count(kpid) <= before + 5, 20), (
        f"the kernel holds {fd_count(kpid)} descriptors (was {before})"
    )
    healthy(hk)


# --------------------------------------------------------------------------------------------
# 3. replays and non-object frames, correctly signed


def raw_client(k, channel):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(f"tcp://127.0.0.1:{port(k, channel)}")
    return s


def replies(s, session, msg_id, seconds, stop_after=None):
    """Replies to msg_id that arrive on `s` within `seconds` (or until `stop_after` came)."""
    got = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0 and len(got) != stop_after:
        if not s.poll(left * 1000):
            break
        frames = s.recv_multipart()
        _, frames = session.feed_identities(frames)
        msg = session.deserialize(frames)
        if msg["parent_header"].get("msg_id") == msg_id:
            got.append(msg)
    return got


def session_for(k):
    return Session(key=k.km.session.key, signature_scheme="hmac-sha256", check_pid=False)


@pytest.mark.timeout(120)
def test_replayed_requests_are_refused(hk):
    session = session_for(hk)
    shell, control = raw_client(hk, "shell"), raw_client(hk, "control")
    time.sleep(0.3)  # let the connections finish their handshakes
    msg = session.msg("execute_request", {"code": "kept += 1; kept", "silent": False,
                                          "store_history": True, "user_expressions": {},
                                          "allow_stdin": False, "stop_on_error": True})
    frames = session.serialize(msg)
    shell.send_multipart(frames)
    first = replies(shell, session, msg["header"]["msg_id"], 60, stop_after=1)
    assert len(first) == 1 and first[0]["content"]["status"] == "ok"
    # the very same bytes again: on shell, on control, from a new connection
    shell.send_multipart(frames)
    control.send_multipart(frames)
    again = raw_client(hk, "shell")
    time.sleep(0.3)
    again.send_multipart(frames)
    for s in (shell, control, again):
        assert replies(s, session, msg["header"]["msg_id"], 2) == [], "a replay was executed"
    # a kernel_info_request replayed on control
    info = session.msg("kernel_info_request", {})
    frames = session.serialize(info)
    control.send_multipart(frames)
    assert len(replies(control, session, info["header"]["msg_id"], 10, stop_after=1)) == 1
    control.send_multipart(frames)
    assert replies(control, session, info["header"]["msg_id"], 2) == []
    for s in (shell, control, again):
        s.close()
    assert "dropped a replayed message" in log_text(hk)
    content, outputs = hk.execute("kept")
    assert result_of(outputs) == "41", "the replayed cell ran again"
    hk.execute("kept -= 1;")
    healthy(hk)


def signed_frames(session, header, parent, metadata, content):
    parts = [json.dumps(x, default=str).encode() for x in (header, parent, metadata, content)]
    return [b"<IDS|MSG>", session.sign(parts)] + parts


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["header", "parent_header", "metadata", "content"])
def test_signed_non_object_frames_are_refused(hk, where):
    session = session_for(hk)
    shell = raw_client(hk, "shell")
    time.sleep(0.3)
    msg = session.msg("kernel_info_request", {})
    parts = {"header": msg["header"], "parent_header": {}, "metadata": {}, "content": {}}
    if where == "header":
        parts["header"] = [msg["header"]["msg_id"], "kernel_info_request"]
    else:
        parts[where] = ["an", "array"]
    shell.send_multipart(signed_frames(session, *parts.values()))
    # no reply at all (in particular none whose parent_header is the array)
    end = time.monotonic() + 3
    while (left := end - time.monotonic()) > 0 and shell.poll(left * 1000):
        frames = shell.recv_multipart()
        raise AssertionError(f"the kernel answered: {frames[:6]}")
    shell.close()
    assert f"{where} is not a JSON object" in log_text(hk)
    healthy(hk)


# --------------------------------------------------------------------------------------------
# 4. the evaluation process's channel


@pytest.mark.timeout(300)
def test_malformed_and_giant_runtime_frames(hk):
    content, outputs = hk.execute(
        'use std::io::Write;\n'
        'let mut out = std::io::stdout();\n'
        # a lying length, malformed JSON, a marker without a length line
        'out.write_all(b"\\0RLP\\099999999999999\\nafter-lie\\n").unwrap();\n'
        'out.write_all(b"\\0RLP\\05\\n{{{{{\\nafter-bad-json\\n").unwrap();\n'
        'out.write_all(b"\\0RLP\\0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").unwrap();\n'
        'out.flush().unwrap();\n'
        'println!("\\nstill-printing");'
    )
    assert content["status"] == "ok", content
    text = "".join(c.get("text", "") for t, c in outputs if t == "stream")
    assert "after-lie" in text and "after-bad-json" in text and "still-printing" in text
    healthy(hk)


LINK_CELL = """{
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let path = std::env::var("RUSTLOOP_LINK").unwrap();
    let hello = format!("D{}\\n", std::process::id());
    let limit: usize = std::env::var("RUSTLOOP_MAX_FRAME_SIZE").unwrap().parse().unwrap();
    let chunk = vec![b'z'; 1 << 20];
    // one frame just over the limit, sent in full, then a good one on the same connection
    let mut giant = UnixStream::connect(&path).unwrap();
    giant.write_all(hello.as_bytes()).unwrap();
    giant.write_all(&[1]).unwrap();
    giant.write_all(&((limit + 1) as u32).to_le_bytes()).unwrap();
    let mut left = limit + 1;
    while left > 0 {
        let n = left.min(chunk.len());
        giant.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    giant.write_all(&[1, 11, 0, 0, 0]).unwrap();
    giant.write_all(b"after-giant").unwrap();
    // a frame claiming 4 GiB, then the connection closes
    let mut lying = UnixStream::connect(&path).unwrap();
    lying.write_all(hello.as_bytes()).unwrap();
    lying.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap();
    lying.write_all(&chunk).unwrap();
    drop(lying);
    // garbage kind and an endless hello
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(hello.as_bytes()).unwrap();
    bad.write_all(&[99, 1, 0, 0, 0, 0]).unwrap();
    let mut endless = UnixStream::connect(&path).unwrap();
    let _ = endless.write_all(&chunk);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(giant);
    "sent"
}"""


@pytest.mark.timeout(300)
def test_giant_and_lying_frames_on_the_link(hk):
    """A cell writes straight onto the link socket the evaluation process uses."""
    content, outputs = hk.execute(LINK_CELL)
    assert result_of(outputs) == '"sent"', (content, outputs)
    text = "".join(c.get("text", "") for t, c in outputs if t == "stream")
    text += "".join(m["content"].get("text", "") for m in hk.drain_iopub(1.0)
                    if m["msg_type"] == "stream")
    assert f"dropped {256 * 1024 * 1024 + 1} bytes" in text
    assert "after-giant" in text
    healthy(hk)
