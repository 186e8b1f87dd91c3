"""DESIGN.md section 3: the async execution acceptance rows 1 to 6, one test per row (the first
cell awaits, tasks outlive cells and run on workers, `:dep` crates share the runtime, `select!`
and `join!` at top level, task output reaches the notebook), and common patterns beyond them.
Rows 7 to 10 (interrupts, panics and crashes, un-awaited futures, `:tasks`) are in
test_async_stops.py.

Rows that need a pristine evaluator use `fresh_kernel`; the rest share the module kernel like
cells of one notebook.
"""

import os
import re
import time

import pytest

from conftest import (
    CELL_TIMEOUT,
    NO_REACTOR,
    ok,
    result_of,
    shell_reply,
    stderr_of,
    stdout_of,
    value,
)


# --------------------------------------------------------------------------------------------
# row 1


@pytest.mark.timeout(600)
def test_row01_first_cell_awaits_and_tokio_features(fresh_kernel):
    k = fresh_kernel
    t0 = time.monotonic()
    content, outputs = k.execute(
        "use std::time::Duration;\ntokio::time::sleep(Duration::from_millis(300)).await;"
    )
    took = time.monotonic() - t0
    assert content["status"] == "ok", content
    assert content["execution_count"] == 1
    assert took >= 0.3, "the sleep did not actually wait"

    # time
    assert value(k, """
let t = tokio::time::Instant::now();
let mut iv = tokio::time::interval(Duration::from_millis(20));
for _ in 0..3 { iv.tick().await; }
let timed_out = tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>()).await.is_err();
(t.elapsed() >= Duration::from_millis(40), timed_out)
""") == "(true, true)"

    # sync: mpsc, oneshot, Mutex, Notify
    assert value(k, """
use tokio::sync::{mpsc, oneshot, Mutex};
let (tx, mut rx) = mpsc::channel::<u32>(8);
for i in 1..=3 { tx.send(i).await.unwrap(); }
drop(tx);
let mut got = Vec::new();
while let Some(v) = rx.recv().await { got.push(v); }
let (otx, orx) = oneshot::channel();
otx.send("one").unwrap();
let m = std::sync::Arc::new(Mutex::new(0u32));
{ let mut g = m.lock().await; *g += 5; }
let n = *m.lock().await;
(got, orx.await.unwrap(), n)
""") == '([1, 2, 3], "one", 5)'

    # macros: join!, select!, #[tokio::main]-free async fn + try_join!
    assert value(k, """
let (a, b) = tokio::join!(async { 1 }, async { 2 });
let s = tokio::select! {
    _ = tokio::time::sleep(Duration::from_secs(5)) => "slow",
    v = async { "fast" } => v,
};
let r: Result<(u8, u8), ()> = tokio::try_join!(async { Ok(3) }, async { Ok(4) });
(a + b, s, r)
""") == '(3, "fast", Ok((3, 4)))'

    # net + io: a TCP echo over 127.0.0.1 with AsyncReadExt/AsyncWriteExt
    assert value(k, """
use tokio::io::{AsyncReadExt, AsyncWriteExt};
let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
let addr = listener.local_addr().unwrap();
let server = tokio::spawn(async move {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 5];
    sock.read_exact(&mut buf).await.unwrap();
    buf.reverse();
    sock.write_all(&buf).await.unwrap();
});
let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
client.write_all(b"hello").await.unwrap();
let mut back = String::new();
client.read_to_string(&mut back).await.unwrap();
server.await.unwrap();
back
""") == '"olleh"'

    # io: duplex + BufReader lines
    assert value(k, """
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
let (mut w, r) = tokio::io::duplex(64);
w.write_all(b"a\\nb\\n").await.unwrap();
drop(w);
let mut lines = BufReader::new(r).lines();
let mut v = Vec::new();
while let Some(l) = lines.next_line().await.unwrap() { v.push(l); }
v
""") == '["a", "b"]'

    # fs
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rustloop-row1-{os.getpid()}.txt")
    try:
        assert value(k, f"""
let p = r#"{path}"#;
tokio::fs::write(p, b"async file").await.unwrap();
let back = tokio::fs::read_to_string(p).await.unwrap();
let meta = tokio::fs::metadata(p).await.unwrap();
(back, meta.len())
""") == '("async file", 10)'
        with open(path) as f:
            assert f.read() == "async file"
    finally:
        if os.path.exists(path):
            os.unlink(path)


# --------------------------------------------------------------------------------------------
# row 2


def test_row02_spawn_without_await_then_await_later(warm):
    k = warm
    outputs = ok(k, """
let r2_h = tokio::spawn(async {
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    40 + 2
});
""")
    assert result_of(outputs) is None
    assert value(k, "r2_h.await.unwrap()") == "42"


# --------------------------------------------------------------------------------------------
# row 3


@pytest.mark.timeout(600)
def test_row03_task_runs_on_worker_while_later_cells_execute(warm):
    k = warm
    ok(k, """
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
let r3_progress = Arc::new(AtomicU64::new(0));
let r3_cell_thread = format!("{:?}", std::thread::current().id());
""")
    # the spawning cell ("cell 5")
    spawn_outputs = ok(k, """
let r3_p = r3_progress.clone();
let r3_handle = tokio::spawn(async move {
    let thread = format!("{:?}", std::thread::current().id());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    let nested = tokio::spawn(async move {
        for i in 1..=60u64 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            tx.send(i).await.unwrap();
        }
        "nested done"
    });
    let mut sum = 0u64;
    while let Some(v) = rx.recv().await {
        sum += v;
        r3_p.store(v, Ordering::SeqCst);
    }
    let nested_result = nested.await.unwrap();
    (sum, nested_result, thread)
});
""")
    # "cells 6..10": varied work while the task runs
    progress = [int(value(k, "r3_progress.load(Ordering::SeqCst)"))]
    assert progress[0] < 60, "the task had already finished before the next cell ran"
    ok(k, "tokio::time::sleep(std::time::Duration::from_millis(300)).await;")
    progress.append(int(value(k, "r3_progress.load(Ordering::SeqCst)")))
    assert value(k, "tokio::spawn(async { 6 * 7 }).await.unwrap()") == "42"
    ok(k, "fn r3_helper(x: u64) -> u64 { x * 2 }")
    progress.append(int(value(k, "r3_helper(r3_progress.load(Ordering::SeqCst)) / 2")))
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert progress[-1] > progress[0], f"the task made no progress between cells: {progress}"

    res = value(k, "let r3_res = r3_handle.await.unwrap();\nr3_res.clone()")
    assert res.startswith('(1830, "nested done", "ThreadId('), res
    assert value(k, "r3_res.2 != r3_cell_thread") == "true", "the task ran on the cell's thread"
    assert NO_REACTOR not in stderr_of(spawn_outputs)
    late = k.drain_iopub(0.3)
    for m in late:
        if m["msg_type"] == "stream":
            assert NO_REACTOR not in m["content"]["text"]


# --------------------------------------------------------------------------------------------
# row 4


@pytest.mark.timeout(1800)
def test_row04_dep_crate_using_tokio_delayqueue(warm):
    k = warm
    content, outputs = k.execute(
        ':dep tokio-util = { version = "0.7", features = ["time"] }', timeout=1700
    )
    assert content["status"] == "ok", (
        f"`:dep tokio-util` failed: ename={content.get('ename')!r} "
        f"evalue={content.get('evalue')!r}\ntraceback={content.get('traceback')}\n"
        f"outputs={outputs}"
    )
    code = """
use tokio_util::time::DelayQueue;
let r4_task = tokio::spawn(async {
    let mut dq = DelayQueue::new();
    dq.insert("late", std::time::Duration::from_millis(300));
    dq.insert("early", std::time::Duration::from_millis(100));
    let key = dq.insert("removed", std::time::Duration::from_millis(200));
    dq.remove(&key);
    let mut order = Vec::new();
    while let Some(e) = std::future::poll_fn(|cx| dq.poll_expired(cx)).await {
        order.push(e.into_inner());
    }
    order
});
r4_task.await.unwrap()
"""
    content, outputs = k.execute(code, timeout=600)
    assert content["status"] == "ok", (
        f"DelayQueue in a spawned task failed: ename={content.get('ename')!r} "
        f"evalue={content.get('evalue')!r}\ntraceback={content.get('traceback')}\n"
        f"outputs={outputs}"
    )
    assert result_of(outputs) == '["early", "late"]'
    # and at the top level of a cell, on the kernel's runtime, with a CancellationToken
    assert value(k, """
let token = tokio_util::sync::CancellationToken::new();
let child = token.child_token();
let waiter = tokio::spawn(async move { child.cancelled().await; "cancelled" });
token.cancel();
waiter.await.unwrap()
""") == '"cancelled"'


# --------------------------------------------------------------------------------------------
# row 5


def test_row05_select_at_top_level(warm):
    k = warm
    # select! as a cell's value, racing two timers and a channel
    assert value(k, """
tokio::select! {
    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => "slow",
    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => "fast",
}
""") == '"fast"'
    assert value(k, """
let (r5_tx, mut r5_rx) = tokio::sync::mpsc::channel::<u8>(1);
tokio::spawn(async move { r5_tx.send(9).await.unwrap(); });
let r5_recv: u8 = tokio::select! {
    Some(v) = r5_rx.recv() => v,
    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => 0,
};
r5_recv
""") == "9"
    # the select!'s timeout branch
    assert value(k, """
let r5_timed_out: bool = tokio::select! {
    _ = std::future::pending::<()>() => false,
    _ = tokio::time::sleep(std::time::Duration::from_millis(30)) => true,
};
r5_timed_out
""") == "true"


def test_row05_select_result_bound_without_annotation(warm):
    """`let x = tokio::select! {...};` with the type left to inference, as in any Rust code.
    (Futures are written inline: a top-level `let fut = async {..};` is a variable that evcxr
    must keep across cells, which a future cannot be; evcxr says so clearly.)"""
    k = warm
    content, outputs = k.execute("""
let r5_sel = tokio::select! {
    a = async { tokio::time::sleep(std::time::Duration::from_secs(3)).await; "slow" } => a,
    b = async { tokio::time::sleep(std::time::Duration::from_millis(50)).await; "fast" } => b,
};
r5_sel
""")
    assert content["status"] == "ok", (content.get("ename"), content.get("evalue"), content.get("traceback"))
    assert result_of(outputs) == '"fast"'
    content, outputs = k.execute("""
let (r5b_tx, mut r5b_rx) = tokio::sync::mpsc::channel::<u8>(1);
tokio::spawn(async move { r5b_tx.send(9).await.unwrap(); });
let r5_untyped = tokio::select! {
    Some(v) = r5b_rx.recv() => v,
    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => 0,
};
r5_untyped
""")
    assert content["status"] == "ok", (content.get("ename"), content.get("evalue"), content.get("traceback"))
    assert result_of(outputs) == "9"


def test_row05_join_at_top_level(warm):
    k = warm
    # both branches wait 500 ms; run concurrently they take well under the 1 s of a sequence
    res = value(k, """
let r5_t = std::time::Instant::now();
let (r5_x, r5_y) = tokio::join!(
    async { tokio::time::sleep(std::time::Duration::from_millis(500)).await; 1u32 },
    async { tokio::time::sleep(std::time::Duration::from_millis(500)).await; 2u32 },
);
(r5_x + r5_y, r5_t.elapsed().as_millis())
""")
    total, ms = re.fullmatch(r"\((\d+), (\d+)\)", res).groups()
    assert total == "3"
    assert 500 <= int(ms) < 950, f"join! took {ms} ms (not concurrent?)"
    assert value(k, """
let r5_j: Result<(u8, &str), String> = tokio::try_join!(
    async { Ok::<u8, String>(1) },
    async { Ok::<&str, String>("two") },
);
r5_j
""") == 'Ok((1, "two"))'


def test_row05_question_mark_after_await(warm):
    k = warm
    # the success path ...
    assert value(k, """
let r5_v: u32 = async { Ok::<u32, std::num::ParseIntError>("7".parse()?) }.await?;
let r5_text = tokio::fs::read_to_string("/proc/self/stat").await?;
(r5_v, r5_text.is_empty())
""") == "(7, false)"
    # ... and the error path ends the cell with an error that shows the cause
    content, outputs = k.execute(
        'let r5_bad: String = tokio::fs::read_to_string("/definitely/not/here").await?;'
    )
    assert content["status"] == "error", content
    shown = stderr_of(outputs) + content["evalue"] + "".join(content["traceback"])
    assert "No such file or directory" in shown, (content, outputs)
    content, outputs = k.execute(
        'let r5_bad2: u32 = async { "x".parse::<u32>() }.await?;'
    )
    assert content["status"] == "error", content
    shown = stderr_of(outputs) + content["evalue"] + "".join(content["traceback"])
    assert "invalid digit" in shown, (content, outputs)
    # state from before is intact
    assert value(k, "r5_v") == "7"


# --------------------------------------------------------------------------------------------
# row 6


def test_row06_println_from_background_task_reaches_notebook(warm):
    k = warm
    kc = k.kc
    msg_id = kc.execute("""
tokio::spawn(async {
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    println!("late hello from a background task");
    eprintln!("late complaint from a background task");
});
""")
    reply = shell_reply(kc, msg_id, CELL_TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    in_cell = k.collect_iopub(msg_id)
    assert "late hello" not in stdout_of(in_cell), "the cell waited for the task"

    seen = []
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for m in k.drain_iopub(0.5):
            if m["msg_type"] == "stream":
                seen.append(m)
        text = "".join(m["content"]["text"] for m in seen)
        if "late hello" in text and "late complaint" in text:
            break
    out = [m for m in seen if "late hello from a background task" in m["content"]["text"]]
    err = [m for m in seen if "late complaint from a background task" in m["content"]["text"]]
    assert out, f"background println! never arrived; streams seen: {[m['content'] for m in seen]}"
    assert out[0]["content"]["name"] == "stdout"
    assert err and err[0]["content"]["name"] == "stderr"
    # routed to the cell that spawned the task, so the front end can place it
    assert out[0]["parent_header"].get("msg_id") == msg_id, out[0]["parent_header"]

    # and it also arrives while the next cell is running
    msg_id = kc.execute("""
tokio::spawn(async {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    println!("during the next cell");
});
""")
    shell_reply(kc, msg_id, CELL_TIMEOUT)
    next_id = kc.execute("tokio::time::sleep(std::time::Duration::from_millis(1500)).await;")
    reply = shell_reply(kc, next_id, CELL_TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    streams = []
    while True:
        m = kc.get_iopub_msg(timeout=CELL_TIMEOUT)
        if m["msg_type"] == "stream":
            streams.append(m)
        if (
            m["parent_header"].get("msg_id") == next_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ):
            break
    streams += [m for m in k.drain_iopub(0.5) if m["msg_type"] == "stream"]
    hits = [m for m in streams if "during the next cell" in m["content"]["text"]]
    assert hits, f"background output lost while another cell ran: {[m['content'] for m in streams]}"
    # under the cell that spawned the task, not the one running when it printed
    assert hits[0]["parent_header"].get("msg_id") == msg_id, hits[0]["parent_header"]


# --------------------------------------------------------------------------------------------
# beyond the rows: a common notebook pattern


def test_extra_bind_handle_of_never_ending_task(warm):
    """`let h = tokio::spawn(async { loop { ... } })` (a JoinHandle<!>) is a very common way to
    start a background ticker; it must not fail to compile."""
    k = warm
    content, outputs = k.execute("""
let ticker = tokio::spawn(async {
    loop { tokio::time::sleep(std::time::Duration::from_millis(50)).await; }
});
""")
    assert content["status"] == "ok", (content.get("ename"), content.get("evalue"), content.get("traceback"))
    assert value(k, "ticker.is_finished()") == "false"
    ok(k, "ticker.abort();")


def test_extra_redefined_type_drops_kept_values_instead_of_misreading(warm):
    """evcxr gives `ctx::Foo` the same TypeId in every cell; a value kept under an old
    definition of `Foo` must not be read as the new one (that would be memory corruption)."""
    k = warm
    ok(k, "#[derive(Debug)]\nstruct XFoo { a: u64 }\nlet x_foo = XFoo { a: 5 };\nlet x_n = 3u64;")
    # new types and other code leave kept values alone
    ok(k, "#[derive(Debug)]\nenum XBar { A }\nlet x_bar = XBar::A;")
    assert value(k, "(x_foo.a + x_n, format!(\"{:?}\", x_bar))") == '(8, "A")'
    # a redefinition that does not compile changes nothing
    content, _ = k.execute("#[derive(Debug)]\nstruct XFoo { a: Strin }")
    assert content["ename"] == "CompilationError", content
    assert value(k, "x_foo.a + 1") == "6"
    # redefining XFoo with a different layout drops x_foo (and says so)
    ok(k, "#[derive(Debug)]\nstruct XFoo { a: String }")
    content, outputs = k.execute("x_foo.a.len()")
    assert content["status"] == "error", f"the old value was read as the new type: {outputs}"
    assert "x_foo" in content["evalue"] or "x_foo" in stdout_of(outputs) + stderr_of(outputs)
    # values of library types are kept
    assert value(k, "x_n") == "3"
    assert value(k, "XFoo { a: \"new\".to_owned() }.a") == '"new"'
