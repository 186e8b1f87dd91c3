"""rustloop benchmark: the same cells through jupyter_client against rustloop and, when its
kernelspec is installed, evcxr_jupyter. Prints each figure and the rustloop/evcxr ratio.

    ~/.cache/rustloop/venv/bin/python bench/bench.py [--runs N]

Figures (medians over N runs unless noted):
- start:        kernel process start -> kernel_info_reply
- first_await:  a new session's first cell with `.await`, sent as soon as kernel_info is
                answered (end to end: kernel start -> execute_reply)
- first_let:    the second cell, `let x = 1;`, sent right after the first (kernel start ->
                its execute_reply); cells with a top-level `let` wait for evcxr's warm-up
- first_await_idle: the same cell sent 5 s after the kernel is ready (a user opening a notebook)
- warm_cell:    `x + 1` after `let x = 1;` in a warm kernel
- lines_20k:    time for a cell printing 20,000 lines until idle, and how many stream messages
evcxr_jupyter needs a separate `:dep tokio` cell before any `.await`; that cell's time is part of
its first_await figure.

Four more tables, in the same run (bench/responsive.py has the last):
- first cell by kind: a new session's first cell (`let`, `fn`, `struct`, `use`, `:dep`,
  `.await`, an expression) sent as soon as kernel_info is answered, kernel start -> its
  execute_reply; for ipykernel the Python counterpart of each;
- warm cell by kind (medians of 7 in one warm session), with the physical floor of each: the
  same code as a bare `rustc --crate-type cdylib -C prefer-dynamic -C opt-level=0` function,
  compiled by the toolchain's rustc itself (the two-line function is printed too, also through
  the rustup proxy); then the same kinds and a cell with a type error, in that session, fresh
  and after 40 cells that each define a function and a struct;
- responsiveness and memory: completion and inspect latency right after start, right after a
  cell and warm; RSS of the kernel and its evaluation process idle and after 200 cells.

The rustloop kernelspec is taken from $JUPYTER_PATH if it has one, else installed into a temp
prefix from the release build ($RUSTLOOP_BIN or ~/.cache/rustloop/target/release/rustloop) the
way ./install.sh installs it (shared build cache and install-time completion paths).
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from queue import Empty

import responsive
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager

AWAIT_CELL = "tokio::time::sleep(std::time::Duration::from_millis(10)).await;"
EVCXR_TOKIO = ':dep tokio = { version = "1", features = ["full"] }'


def ensure_rustloop_spec():
    try:
        KernelSpecManager().get_kernel_spec("rustloop")
        return
    except NoSuchKernel:
        pass
    binary = os.environ.get(
        "RUSTLOOP_BIN", str(Path.home() / ".cache/rustloop/target/release/rustloop")
    )
    prefix = tempfile.mkdtemp(prefix="rustloop-bench-")
    # As ./install.sh installs it: with the shared cache, and what completion learns at install.
    print(f"installing rustloop into {prefix} (builds its shared cache)", flush=True)
    subprocess.run([binary, "install", "--prefix", prefix], check=True,
                   stdout=subprocess.DEVNULL)
    os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")


def evcxr_spec():
    for name in ("rust", "evcxr", "evcxr_jupyter"):
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if "evcxr" in " ".join(spec.argv):
            return name
    return None


class Session:
    def __init__(self, name):
        self.started = time.monotonic()
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()

    def kernel_info(self, timeout=60):
        self.kc.kernel_info()
        self.kc.get_shell_msg(timeout=timeout)
        return time.monotonic() - self.started

    def run(self, code, timeout=900):
        """Seconds from execute_request to idle; (seconds, stream message count, status).

        A client subscribes to iopub asynchronously, so a kernel's first messages can be
        published before the subscription reaches it (ipykernel's, once in a while). When the
        reply came and no idle followed within 5 s, the reply's time counts."""
        t = time.monotonic()
        msg_id = self.kc.execute(code)
        streams = 0
        reply = replied_at = None
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except Empty:
                if reply is None:
                    reply = self._reply(msg_id)
                    replied_at = time.monotonic()
                elif time.monotonic() - replied_at > 5:
                    print(f"(no idle on iopub for {code!r}; timed to its reply)")
                    return replied_at - t, streams, reply["content"]["status"]
                if time.monotonic() - t > timeout:
                    raise TimeoutError(f"no reply to {code!r} in {timeout} s")
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                streams += 1
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        if reply is None:
            reply = self._reply(msg_id, timeout)
        return time.monotonic() - t, streams, reply["content"]["status"]

    def _reply(self, msg_id, timeout=0):
        """The shell reply to `msg_id` if it has come (within `timeout`), else None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                return None
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def measure(name, runs, needs_tokio_dep):
    figures = {k: [] for k in ("start", "first_await", "first_let", "first_await_idle",
                               "warm_cell", "lines_20k", "lines_20k_msgs")}
    for i in range(runs):
        s = Session(name)
        figures["start"].append(s.kernel_info())
        if needs_tokio_dep:
            s.run(EVCXR_TOKIO)
        sent = time.monotonic()
        seconds, _, status = s.run(AWAIT_CELL)
        assert status == "ok", f"{name}: first await cell failed"
        figures["first_await"].append(sent + seconds - s.started)
        sent = time.monotonic()
        seconds, _, _ = s.run("let x = 1;")
        figures["first_let"].append(sent + seconds - s.started)
        warm = [s.run("x + 1")[0] for _ in range(5)]
        figures["warm_cell"].append(statistics.median(warm))
        code = 'for i in 0..20000 { println!("line {i}"); }'
        seconds, messages, _ = s.run(code)
        figures["lines_20k"].append(seconds)
        figures["lines_20k_msgs"].append(messages)
        s.close()

        s = Session(name)
        s.kernel_info()
        time.sleep(5)
        elapsed = 0.0
        if needs_tokio_dep:
            elapsed += s.run(EVCXR_TOKIO)[0]
        seconds, _, _ = s.run(AWAIT_CELL)
        figures["first_await_idle"].append(elapsed + seconds)
        s.close()
    medians = {k: statistics.median(v) for k, v in figures.items() if v}
    medians["lines_per_sec"] = 20000 / medians["lines_20k"]
    return medians


FIRST_CELLS = [
    # (kind, rust cell, python cell)
    ("let", "let x = 1;", "x = 1"),
    ("fn", "fn f() -> u32 { 1 }", "def f():\n    return 1"),
    ("struct", "struct S { a: u32 }", "class S:\n    a = 1"),
    ("use", "use std::collections::HashMap;", "from collections import OrderedDict"),
    (":dep", ':dep itoa = "1"', None),
    (".await", AWAIT_CELL, "import asyncio\nawait asyncio.sleep(0.01)"),
    ("expression", "1 + 2", "1 + 2"),
]

WARM_CELLS = [
    ("let", "let w{i} = 5 + 1;"),
    ("expression", "w2 * 2"),
    ("println!", 'println!("hi {{}}", w2);'),
    ("fn", "fn f{i}(x: u32) -> u32 {{ x + 5 }}"),
    ("iterator", "(0..15).map(|x| x * 2).sum::<u64>()"),
]

# The physical floor of each warm cell: the same code as the body of a bare cdylib function
# (a final value printed with `{:?}`, as the kernel shows it), compiled by the toolchain's own
# rustc (not the rustup proxy, which adds about 15 ms to every call).
FLOOR_CELLS = {
    "let": "let w = 5 + 1; let _ = w;",
    "expression": "let w2 = 2u32; println!(\"{:?}\", w2 * 2);",
    "println!": "let w2 = 2u32; println!(\"hi {}\", w2);",
    "fn": "",
    "iterator": "println!(\"{:?}\", (0..15).map(|x| x * 2).sum::<u64>());",
    "type error": "let w2 = 2u32; let bad = w2 + \"x\";",
}
FLOOR_ITEMS = {"fn": "pub fn f1(x: u32) -> u32 { x + 5 }\n"}


def first_cells(name, runs, python=False, needs_tokio_dep=False):
    """Kernel start -> reply of a new session's first cell, per kind (medians)."""
    out = {}
    for kind, rust, py in FIRST_CELLS:
        code = py if python else rust
        if code is None:
            continue
        times = []
        for _ in range(runs):
            s = Session(name)
            s.kernel_info()
            if needs_tokio_dep and kind == ".await":
                s.run(EVCXR_TOKIO)
            sent = time.monotonic()
            seconds, _, status = s.run(code)
            times.append(sent + seconds - s.started)
            assert status == "ok", f"{name}: first cell {kind!r} failed"
            s.close()
        out[kind] = statistics.median(times)
    return out


# A cell with a type error (E0277), replied to with the error.
ERROR_CELL = ("type error", 'let bad = w2 + "x";')
# What a notebook has defined after a while: each of these cells adds a function and a struct.
ITEM_CELL = ("fn item{i}(x: u64) -> u64 {{ (0..x).map(|y| y * {i}).sum() }}\n"
             "#[derive(Debug, Clone)] pub struct S{i} {{ a: u64, b: String }}")
GROWN_BY = 40


def warm_cells(name, runs=7, needs_tokio_dep=False):
    """Medians per kind in one warm session: (fresh, after GROWN_BY item cells)."""
    s = Session(name)
    s.kernel_info()
    if needs_tokio_dep:
        s.run(EVCXR_TOKIO)
    s.run("let w2 = 2u32;")
    for _ in range(3):
        s.run("w2 + 1")

    def kinds(first):
        out = {}
        for kind, template in WARM_CELLS + [ERROR_CELL]:
            times = []
            for i in range(runs):
                seconds, _, status = s.run(template.format(i=first + i))
                expected = "error" if (kind, template) == ERROR_CELL else "ok"
                assert status == expected, f"{name}: warm cell {kind!r} replied {status}"
                times.append(seconds)
            out[kind] = statistics.median(times)
        return out

    fresh = kinds(100)
    for i in range(GROWN_BY):
        assert s.run(ITEM_CELL.format(i=i))[2] == "ok", f"{name}: item cell failed"
    grown = kinds(200)
    s.close()
    return fresh, grown


def toolchain_rustc():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True,
                             text=True).stdout.strip()
    return str(Path(sysroot) / "bin" / "rustc")


def rustc_floor(body="", items="", rustc="rustc", runs=7, fails=False):
    """A bare rustc of a cdylib with one function: what compiling a cell costs at least.
    `fails`: the body has a type error, so the floor is rustc reporting it."""
    tmp = Path(tempfile.mkdtemp(prefix="rustloop-floor-"))
    times = []
    for i in range(runs):
        # A new source each time, as each cell is.
        (tmp / "cell.rs").write_text(
            f"{items}#[unsafe(no_mangle)]\npub extern \"C\" fn cell{i}() -> u32 {{ {body} 41 + 1 }}\n")
        t = time.monotonic()
        done = subprocess.run([rustc, "--edition", "2024", "--crate-type", "cdylib", "-C",
                               "prefer-dynamic", "-C", "opt-level=0", "cell.rs", "-o",
                               f"libcell{i}.so"], cwd=tmp, capture_output=True)
        assert (done.returncode != 0) == fails, done.stderr.decode()
        times.append(time.monotonic() - t)
    return statistics.median(times)


def ipykernel_spec():
    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        return None


def print_table(title, columns, rows):
    print(f"\n{title}")
    print(f"{'':<12}" + "".join(f"{c:>16}" for c in columns))
    for label, values in rows:
        print(f"{label:<12}" + "".join(f"{v:>16}" for v in values))


def by_kind(runs, evcxr):
    """Prints the first-cell and warm-cell tables; returns the warm figures for `targets`:
    {"warm": {kernel: {kind: s}}, "grown": ..., "floor": {kind: s}, "grown_floor": ...}."""
    ipy = ipykernel_spec()
    first = {"rustloop": first_cells("rustloop", runs)}
    if evcxr:
        first["evcxr"] = first_cells(evcxr, runs, needs_tokio_dep=True)
    if ipy:
        first["ipykernel"] = first_cells(ipy, runs, python=True)
    rows = []
    for kind, _, _ in FIRST_CELLS:
        r = first["rustloop"][kind]
        e = first.get("evcxr", {}).get(kind)
        p = first.get("ipykernel", {}).get(kind)
        rows.append((kind, [f"{r:.3f} s", f"{e:.3f} s" if e else "-",
                            f"{r / e:.2f}" if e else "-", f"{p:.3f} s" if p else "-"]))
    print_table("first cell of a session, kernel start -> reply (median of %d)" % runs,
                ["rustloop", "evcxr_jupyter", "ratio", "ipykernel"], rows)

    warm, grown = {}, {}
    warm["rustloop"], grown["rustloop"] = warm_cells("rustloop")
    if evcxr:
        warm["evcxr"], grown["evcxr"] = warm_cells(evcxr, needs_tokio_dep=True)
    rustc = toolchain_rustc()
    proxy_floor = rustc_floor()
    two_line_floor = rustc_floor(rustc=rustc)
    # The floor of a cell in the grown notebook has the same definitions before it.
    grown_items = "".join(ITEM_CELL.format(i=i) + "\n" for i in range(GROWN_BY))
    floor, grown_floor = {}, {}
    for kind in FLOOR_CELLS:
        items = FLOOR_ITEMS.get(kind, "")
        fails = kind == ERROR_CELL[0]
        floor[kind] = rustc_floor(FLOOR_CELLS[kind], items, rustc=rustc, fails=fails)
        grown_floor[kind] = rustc_floor(FLOOR_CELLS[kind], grown_items + items, rustc=rustc,
                                        fails=fails)
    rows = []
    for kind in FLOOR_CELLS:
        r = warm["rustloop"][kind]
        e = warm.get("evcxr", {}).get(kind)
        rows.append((kind, [f"{r:.3f} s", f"{e:.3f} s" if e else "-",
                            f"{r / e:.2f}" if e else "-", f"{floor[kind]:.3f} s",
                            f"{r / floor[kind]:.2f}x"]))
    print_table("warm cell (median of 7); floor: the same code in a bare cdylib, toolchain rustc",
                ["rustloop", "evcxr_jupyter", "ratio", "floor", "vs floor"], rows)
    print(f"two-line function, bare: {two_line_floor:.3f} s with the toolchain's rustc, "
          f"{proxy_floor:.3f} s through the rustup proxy (`rustc` on PATH)")
    rows = []
    for kind in FLOOR_CELLS:
        r = grown["rustloop"][kind]
        e = grown.get("evcxr", {}).get(kind)
        rows.append((kind, [f"{r:.3f} s", f"{e:.3f} s" if e else "-",
                            f"{r / e:.2f}" if e else "-", f"{grown_floor[kind]:.3f} s",
                            f"{r / grown_floor[kind]:.2f}x"]))
    print_table(f"warm cell (median of 7) after {GROWN_BY} cells that each define a fn and a "
                "struct (both kernels compile every earlier item again); floor: the same code "
                "after the same definitions in a bare cdylib",
                ["rustloop", "evcxr_jupyter", "ratio", "floor", "vs floor"], rows)
    return {"warm": warm, "grown": grown, "floor": floor, "grown_floor": grown_floor}


# Issue 10's targets: (what, limit); `targets` prints each figure against its limit.
RATIO_LIMIT = 0.6         # warm cell, rustloop / evcxr_jupyter
FLOOR_LIMIT = 1.5         # warm cell, rustloop / bare rustc of the same code
REPLY_LIMIT = 0.25        # completion and inspect replies, seconds
IDLE_RSS_LIMIT = 150      # kernel RSS before the first completion, MB


def targets(kinds, responsiveness):
    """One line per target figure of this run, `met` or `MISSED`; returns the misses."""
    rows = []
    if kinds:
        for label, figures, floors in (("warm", kinds["warm"], kinds["floor"]),
                                       (f"+{GROWN_BY} items", kinds["grown"],
                                        kinds["grown_floor"])):
            for kind, seconds in figures["rustloop"].items():
                e = figures.get("evcxr", {}).get(kind)
                if e:
                    rows.append((f"{label} {kind}: vs evcxr_jupyter", seconds / e,
                                 f"<= {RATIO_LIMIT}", seconds / e <= RATIO_LIMIT))
                rows.append((f"{label} {kind}: vs floor", seconds / floors[kind],
                             f"<= {FLOOR_LIMIT}", seconds / floors[kind] <= FLOOR_LIMIT))
    if responsiveness:
        for figure, (value, _) in responsiveness.items():
            if figure.startswith(("complete", "inspect")):
                rows.append((figure, value, f"< {REPLY_LIMIT} s", value < REPLY_LIMIT))
        idle = responsiveness["RSS idle, kernel"][0]
        rows.append(("RSS idle, kernel (MB)", idle, f"< {IDLE_RSS_LIMIT}",
                     idle < IDLE_RSS_LIMIT))
    print("\ntargets (issue 10), rustloop in this run")
    for what, value, limit, ok in rows:
        print(f"{what:<44}{value:>10.2f}  {limit:<8}{'met' if ok else 'MISSED':>8}")
    missed = [what for what, _, _, ok in rows if not ok]
    print(f"{len(rows) - len(missed)} of {len(rows)} met" + (
        "; missed: " + ", ".join(missed) if missed else ""))
    return missed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["overview", "kinds", "responsive"], default=None,
                        help="run one part of the benchmark")
    args = parser.parse_args()
    ensure_rustloop_spec()
    evcxr = evcxr_spec()
    kinds = responsiveness = None
    if args.only in (None, "kinds"):
        kinds = by_kind(args.runs, evcxr)
    if args.only in (None, "responsive"):
        kernels = [("rustloop", "rustloop", responsive.RUST, None)]
        if evcxr:
            kernels.append(("evcxr_jupyter", evcxr, responsive.RUST, EVCXR_TOKIO))
        if ipykernel_spec():
            kernels.append(("ipykernel", "python3", responsive.PYTHON, None))
        responsiveness = responsive.table(Session, kernels)["rustloop"]
    if args.only in ("kinds", "responsive"):
        targets(kinds, responsiveness)
        return
    results = {"rustloop": measure("rustloop", args.runs, needs_tokio_dep=False)}
    if evcxr:
        results["evcxr"] = measure(evcxr, args.runs, needs_tokio_dep=True)
    units = {"lines_20k_msgs": "msgs", "lines_per_sec": "lines/s"}
    print(f"{'figure':<18} {'rustloop':>16} {'evcxr_jupyter':>16} {'ratio':>7}")
    for key, value in results["rustloop"].items():
        unit = units.get(key, "s")
        other = results.get("evcxr", {}).get(key)
        if unit == "s":
            fmt = lambda v, unit=unit: f"{v:.3f} {unit}"  # noqa: E731
        else:
            fmt = lambda v, unit=unit: f"{v:.0f} {unit}"  # noqa: E731
        ratio = f"{value / other:.2f}" if other else "-"
        print(f"{key:<18} {fmt(value):>16} {fmt(other) if other else 'not installed':>16} "
              f"{ratio:>7}")
    targets(kinds, responsiveness)


if __name__ == "__main__":
    main()
