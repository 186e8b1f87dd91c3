"""Addresses and transports as remote launchers (Kernel/Enterprise Gateway, JupyterHub
spawners) hand them over: the kernel binds exactly the IP its connection file names, including
0.0.0.0 when asked, and nothing wider; a port that is already taken ends the kernel at once with
one clear line on stderr and a non-zero status. (The ipc transport is covered by
test_lifecycle.py::test_ipc_transport.)

The kernel is started directly from a hand-written connection file, as a launcher does.
"""

import os
import socket
import subprocess
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from conftest import connection_file, free_ports, rustloop_bin, stop_server
from processes import wait_for


def listening(pid):
    """{(ip, port)} of the TCP sockets process `pid` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if width == 8:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, words)
            found.add((ip, int(hex_port, 16)))
    return found


def start(path, log):
    return subprocess.Popen([str(rustloop_bin()), "kernel", "--connection-file", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def answers_kernel_info(path, connect_ip):
    kc = BlockingKernelClient()
    kc.load_connection_file(str(path))
    kc.ip = connect_ip
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        return kc.kernel_info(reply=True, timeout=30)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()


def other_loopback():
    """127.0.0.2 works on Linux without configuration (all of 127/8 is loopback)."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return None


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.2", "0.0.0.0"])
def test_binds_exactly_the_named_ip(tmp_path, ip):
    if ip == "127.0.0.2" and other_loopback() is None:
        pytest.skip("127.0.0.2 cannot be bound on this machine")
    path, info = connection_file(tmp_path, ip)
    ports = {info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port",
                               "hb_port")}
    with open(tmp_path / "kernel.log", "wb") as log:
        proc = start(path, log)
        try:
            assert wait_for(lambda: {p for _, p in listening(proc.pid)} >= ports, 60, 0.1), (
                listening(proc.pid), (tmp_path / "kernel.log").read_text())
            # exactly the five ports, each on exactly the IP of the file: no other listener
            # (no IPv6 wildcard, no extra port)
            assert listening(proc.pid) == {(ip, p) for p in ports}
            connect = "127.0.0.1" if ip == "0.0.0.0" else ip
            assert answers_kernel_info(path, connect)
            if ip == "127.0.0.2":
                # not reachable on another address of the same machine
                with socket.socket() as s:
                    s.settimeout(5)
                    assert s.connect_ex(("127.0.0.1", info["shell_port"])) != 0
        finally:
            stop_server(proc)


@pytest.mark.timeout(120)
def test_port_taken_is_one_clear_line_and_a_failure(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        ports = free_ports("127.0.0.1", 5)
        ports[3] = port  # the control port
        path, _ = connection_file(tmp_path, "127.0.0.1", ports)
        proc = subprocess.run([str(rustloop_bin()), "kernel", "--connection-file", str(path)],
                              capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("rustloop: "), line
    assert f"127.0.0.1:{port}" in line and "control" in line, line
    assert "already in use" in line, line
