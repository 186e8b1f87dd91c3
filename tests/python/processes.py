"""The kernel's processes as /proc shows them, for the tests that check what is left behind
(test_lifecycle.py, test_hostile.py, test_lifetime.py).

A process is known by its pid and start time together, so a pid the system hands out again is
never taken for a survivor.
"""

import os
import time
from pathlib import Path


def stat(pid):
    """{state, ppid, pgrp, sid, start, comm} of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
    fields = text.rsplit(")", 1)[1].split()
    comm = text[text.index("(") + 1:text.rindex(")")]
    return {"state": fields[0], "ppid": int(fields[1]), "pgrp": int(fields[2]),
            "sid": int(fields[3]), "start": int(fields[19]), "comm": comm}


def alive(s):
    return s is not None and s["state"] not in "ZX"


def processes():
    """{pid: stat} of every live (not zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(s := stat(int(entry))):
            out[int(entry)] = s
    return out


def descendants(pid, procs=None):
    """pids of all live descendants of `pid` (children, grandchildren, ...)."""
    procs = procs or processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, s in procs.items() if s["ppid"] in frontier and p not in found}
        found |= frontier
    return found


def session_of(kpid):
    """Live processes of the kernel's session (Jupyter starts it in a new one): {pid: stat}."""
    return {p: s for p, s in processes().items() if s["sid"] == kpid and p != kpid}


def orphans(kpid):
    """Processes of the kernel's session that are no longer below the kernel."""
    procs = processes()
    below = descendants(kpid, procs)
    return {p: s["comm"] for p, s in procs.items()
            if s["sid"] == kpid and p != kpid and p not in below}


def kernel_pid(k):
    return k.km.provisioner.process.pid


def evaluation_pids(k):
    """The kernel's children that run the rustloop binary (its evaluation process)."""
    binary = os.path.realpath(k.km.kernel_spec.argv[0])
    pids = set()
    for p, s in processes().items():
        if s["ppid"] == kernel_pid(k):
            try:
                if os.path.realpath(f"/proc/{p}/exe") == binary:
                    pids.add(p)
            except OSError:
                pass
    return pids


def wait_for(predicate, timeout, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def snapshot(pids):
    """{pid: stat} of those of `pids` that are alive now."""
    return {p: s for p in pids if alive(s := stat(p))}


def survivors(snap):
    """{pid: comm} of the processes in `snap` still running (same pid, same start)."""
    return {p: s["comm"] for p, s in snap.items()
            if alive(now := stat(p)) and now["start"] == s["start"]}


def assert_all_gone(snap, after, timeout=20):
    """Every process in `snap` exits within `timeout` s."""
    assert wait_for(lambda: not survivors(snap), timeout, 0.1), (
        f"processes left {after}: {survivors(snap)}"
    )
