"""Responsiveness and memory, for bench.py: completion and inspect latency at the moments a
user types (right after kernel_info, right after the first cell, warm), and the resident memory
of the kernel and its evaluation process (idle after a first cell, and after 200 cells).

Latency is request -> reply through jupyter_client, with the number of matches returned (a
reply in time with nothing in it is not a completion). RSS is read from /proc (VmRSS); for a
kernel that runs cells in a child process (rustloop, evcxr_jupyter) the children are shown
separately.
"""

import statistics
import time
from pathlib import Path

# (code, cursor) for completion and inspection, per language.
RUST = {
    "complete": "tokio::time::sl",
    "inspect": "tokio::spawn",
    "first": "let x = 1;",
    "cells": [
        "let v{i} = {i} + 1;",
        "v{j} * 2",
        'println!("hi {{}}", v{j});',
        "fn f{i}(x: u64) -> u64 {{ x + {i} }}",
        "(0..15).map(|x| x * {i}).sum::<u64>()",
    ],
}
PYTHON = {
    "complete": "import asyncio\nasyncio.sl",
    "inspect": "import asyncio\nasyncio.create_task",
    "first": "x = 1",
    "cells": [
        "v{i} = {i} + 1",
        "v{j} * 2",
        'print("hi", v{j})',
        "def f{i}(x):\n    return x + {i}",
        "sum(x * {i} for x in range(15))",
    ],
}


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def memory(session):
    """(kernel MB, MB of its child processes and their children)."""
    pid = session.km.provisioner.process.pid
    kids, todo = [], children(pid)
    while todo:
        c = todo.pop()
        kids.append(c)
        todo += children(c)
    return rss_mb(pid), sum(rss_mb(c) for c in kids)


def timed(session, kind, code, timeout=60):
    """Seconds for a complete/inspect request with the cursor at the end, and a summary."""
    kc = session.kc
    t = time.monotonic()
    if kind == "complete":
        msg_id = kc.complete(code, len(code))
    else:
        msg_id = kc.inspect(code, len(code))
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    seconds = time.monotonic() - t
    content = reply["content"]
    if kind == "complete":
        matches = content.get("matches", [])
        summary = f"{len(matches)} matches" + (f", first {matches[0]}" if matches else "")
    else:
        summary = "found" if content.get("found") else "not found"
    return seconds, summary


def measure(session_class, name, lang, setup=None):
    """Figures for one kernel: {figure: (value, note)}. `setup`: a first cell some kernels
    need (evcxr_jupyter's `:dep tokio`)."""
    out = {}
    # Idle memory before any completion or inspection (rust-analyzer loads on the first one).
    s = session_class(name)
    s.kernel_info()
    if setup:
        s.run(setup)
    s.run(lang["first"])
    time.sleep(20)
    kernel, child = memory(s)
    out["RSS idle, kernel"] = (kernel, "20 s after a first cell, no completion yet")
    out["RSS idle, children"] = (child, "")
    s.close()

    s = session_class(name)
    s.kernel_info()
    if setup:
        s.run(setup)
    for kind in ("complete", "inspect"):
        out[f"{kind}: right after start"] = timed(s, kind, lang[kind])
    s.run(lang["first"])
    out["complete: right after a cell"] = timed(s, "complete", lang["complete"])
    time.sleep(20)
    for kind in ("complete", "inspect"):
        # Warm: the analysis had time to load.
        times = []
        for _ in range(5):
            seconds, summary = timed(s, kind, lang[kind])
            times.append(seconds)
        out[f"{kind}: warm (median of 5)"] = (statistics.median(times), summary)
    s.run(lang["first"])
    out["complete: right after a cell (warm)"] = timed(s, "complete", lang["complete"])
    for i in range(200):
        template = lang["cells"][i % len(lang["cells"])]
        j = max(0, i - (i % len(lang["cells"])))
        _, _, status = s.run(template.format(i=i, j=j))
        assert status == "ok", f"{name}: cell {i} failed"
    kernel, child = memory(s)
    out["RSS after 200 cells, kernel"] = (kernel, "")
    out["RSS after 200 cells, children"] = (child, "")
    s.close()
    return out


def table(session_class, kernels):
    """Runs `measure` for [(label, kernel name, lang, setup cell)], prints one table and
    returns the figures by label."""
    results = {
        label: measure(session_class, name, lang, setup)
        for label, name, lang, setup in kernels
    }
    labels = [label for label, _, _, _ in kernels]
    figures = list(next(iter(results.values())).keys())
    print("\nresponsiveness and memory (completion: `tokio::time::sl`, inspect: `tokio::spawn`;"
          " Python: asyncio.sl / asyncio.create_task)")
    print(f"{'':<38}" + "".join(f"{label:>16}" for label in labels))
    for figure in figures:
        cells = []
        for label in labels:
            value, _ = results[label][figure]
            unit = "MB" if figure.startswith("RSS") else "s"
            cells.append(f"{value:.0f} {unit}" if unit == "MB" else f"{value:.3f} {unit}")
        print(f"{figure:<38}" + "".join(f"{c:>16}" for c in cells))
    print("replies:")
    for label in labels:
        notes = [f"{f}: {n}" for f, (_, n) in results[label].items() if n and "match" in n]
        print(f"  {label}: " + "; ".join(notes))
    return results
