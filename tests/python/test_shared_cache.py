"""The installation's shared build cache (src/engine/shared_cache.rs), the way JupyterHub runs
kernels: `rustloop install --prefix P` (as root) pre-builds tokio and the runtime into
P/share/rustloop/cache and names it in the kernelspec's env; kernels then run as two different
unprivileged users, each with its own slot, and their first `.await` cell compiles no tokio;
completion knows what the install learned from rust-analyzer before it has loaded.

Needs root (to create the users). The toolchain must be reachable by the users: when it lives
under a private home (rustup in /root), it is hard-linked into the prefix (no extra disk), as an
administrator would install it under /opt.
"""

import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from conftest import CELL_TIMEOUT, connection_file, rustloop_bin, stop_server
from processes import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creating the two unprivileged users needs root")

USERS = ("rlshared1", "rlshared2")
INSTALL_TIMEOUT = float(os.environ.get("RUSTLOOP_FIRST_CELL_TIMEOUT", "900"))


def reachable_by_others(path):
    """Every directory above `path` can be traversed by other users."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in [p, *p.parents])


def tree(path):
    """{relative path: (size, mtime)} of every file under `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out


def du(path):
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


@pytest.fixture(scope="module")
def installation():
    """An installation prefix readable by everyone, with the shared cache built as root."""
    prefix = Path(tempfile.mkdtemp(prefix="rustloop-shared-", dir="/var/tmp"))
    prefix.chmod(0o755)
    (prefix / "bin").mkdir()
    binary = prefix / "bin" / "rustloop"
    shutil.copy2(rustloop_bin(), binary)
    binary.chmod(0o755)
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if not reachable_by_others(sysroot):
        toolchain = prefix / "toolchain"
        if subprocess.run(["cp", "-al", sysroot, str(toolchain)]).returncode != 0:
            shutil.rmtree(toolchain, ignore_errors=True)
            subprocess.run(["cp", "-a", sysroot, str(toolchain)], check=True)
        sysroot = str(toolchain)
    path = f"{sysroot}/bin:/usr/local/bin:/usr/bin:/bin"
    env = {**os.environ, "PATH": path, "RUSTLOOP_CACHE_DIR": str(prefix / "root-cache")}
    env.pop("RUSTUP_TOOLCHAIN", None)
    started = time.monotonic()
    out = subprocess.run([str(binary), "install", "--prefix", str(prefix)], env=env,
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\nshared cache built in {time.monotonic() - started:.1f} s")
    spec = json.loads((prefix / "share/jupyter/kernels/rustloop/kernel.json").read_text())
    shared = prefix / "share/rustloop/cache"
    assert spec["env"] == {"RUSTLOOP_SHARED_CACHE": str(shared)}
    manifests = glob.glob(str(shared / "*" / "manifest.json"))
    assert len(manifests) == 1, manifests
    yield {"prefix": prefix, "binary": binary, "path": path, "spec": spec, "shared": shared}
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def users():
    for name in USERS:
        subprocess.run(["userdel", "-r", name], capture_output=True)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    yield [pwd.getpwnam(n) for n in USERS]
    for name in USERS:
        subprocess.run(["userdel", "-r", name], capture_output=True)


class UserKernel:
    """A kernel started as `user` with the kernelspec's environment, as a spawner would."""

    def __init__(self, inst, user, env_extra=None):
        self.dir = Path(tempfile.mkdtemp(prefix="rl-conn-", dir="/var/tmp"))
        self.dir.chmod(0o755)
        self.conn, _ = connection_file(self.dir, "127.0.0.1")
        os.chown(self.conn, user.pw_uid, user.pw_gid)
        self.log_path = self.dir / "kernel.log"
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
               "PATH": inst["path"], "RUSTLOOP_LOG": "rustloop=info,zeromq::codec=warn",
               **inst["spec"]["env"], **(env_extra or {})}
        argv = [a.replace("{connection_file}", str(self.conn)) for a in inst["spec"]["argv"]]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                 "--init-groups", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=user.pw_dir)
        self.kc = BlockingKernelClient()
        self.kc.load_connection_file(str(self.conn))
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code, timeout):
        msg_id = self.kc.execute(code)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        result = None
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return reply["content"], result

    def complete(self, code, timeout=30):
        msg_id = self.kc.complete(code, len(code))
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"]

    def log(self):
        return self.log_path.read_text(errors="replace")

    def close(self):
        self.kc.stop_channels()
        stop_server(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


FIRST_CELL = ("tokio::time::sleep(std::time::Duration::from_millis(50)).await;\n"
              "tokio::spawn(async { 20 + 1 }).await.unwrap() * 2")


@pytest.mark.timeout(3600)
def test_two_users_start_from_the_shared_cache(installation, users):
    shared = installation["shared"]
    before = tree(shared)
    slots = []
    for user in users:
        k = UserKernel(installation, user)
        try:
            # Before rust-analyzer has loaded, completion knows what the install learned.
            completion = k.complete("tokio::time::sl")
            assert "sleep" in completion["matches"], completion
            assert completion["metadata"]["rustloop_source"] == "known", completion
            t0 = time.monotonic()
            reply, result = k.run(FIRST_CELL, CELL_TIMEOUT)
            took = time.monotonic() - t0
            assert reply["status"] == "ok", (reply, k.log())
            assert result == "42"
            print(f"\n{user.pw_name}: first .await cell with the shared cache in {took:.1f} s")
            assert "using the shared build cache" in k.log(), k.log()
            assert "shared build cache not used" not in k.log()
        finally:
            k.close()
        home_cache = Path(user.pw_dir) / ".cache/rustloop"
        found = glob.glob(str(home_cache / "*" / "shared-*" / "slot-0"))
        assert len(found) == 1, list(home_cache.rglob("slot-*"))
        slot = Path(found[0])
        assert slot.stat().st_uid == user.pw_uid
        # tokio was not compiled for this user: its artifacts are links into the shared cache
        tokio = [p for p in slot.rglob("libtokio-*") if p.suffix in (".rlib", ".rmeta")]
        assert tokio, "no tokio in the slot"
        for p in tokio:
            assert p.is_symlink(), f"{p} was built for this user"
            assert str(os.readlink(p)).startswith(str(shared)), os.readlink(p)
        runtime = list(slot.rglob("librustloop.so"))
        assert runtime and all(p.is_symlink() for p in runtime), runtime
        kb = du(slot)
        print(f"{user.pw_name}: slot {slot} uses {kb} KiB")
        slots.append(slot)
    assert slots[0] != slots[1]
    # the shared cache was only read
    assert tree(shared) == before


@pytest.mark.timeout(600)
@pytest.mark.parametrize("problem", ["missing", "other toolchain"])
def test_an_unusable_shared_cache_is_said_once_and_falls_back(installation, users, problem):
    shared = installation["shared"]
    if problem == "missing":
        target = Path(tempfile.mkdtemp(prefix="rl-none-", dir="/var/tmp")) / "nothing"
    else:
        # a copy of the cache whose manifest names another compiler
        target = Path(tempfile.mkdtemp(prefix="rl-other-", dir="/var/tmp"))
        (key,) = [p.name for p in shared.iterdir()]
        (target / key).mkdir()
        manifest = json.loads((shared / key / "manifest.json").read_text())
        manifest["rustc"] = "rustc 1.0.0 (a28077b28 2015-05-13)\nhost: x86_64-unknown-linux-gnu"
        (target / key / "manifest.json").write_text(json.dumps(manifest))
        for d in (target, target / key, target / key / "manifest.json"):
            d.chmod(0o755)
    user = users[0]
    cache = Path(tempfile.mkdtemp(prefix="rl-cache-", dir="/var/tmp"))
    os.chown(cache, user.pw_uid, user.pw_gid)
    k = UserKernel(installation, user, {"RUSTLOOP_SHARED_CACHE": str(target),
                                        "RUSTLOOP_CACHE_DIR": str(cache)})
    try:
        assert k.kc.kernel_info(reply=True, timeout=60)["content"]["status"] == "ok"
        lines = [l for l in k.log().splitlines() if "shared build cache not used" in l]
        assert len(lines) == 1, k.log()
        reason = "cannot read" if problem == "missing" else "different toolchain"
        assert reason in lines[0], lines[0]
        assert str(cache) in lines[0]
        # the kernel uses the user's own cache instead
        assert wait_for(lambda: list(cache.glob("*/slot-0")), 30)
    finally:
        k.close()
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(target if problem != "missing" else target.parent, ignore_errors=True)
