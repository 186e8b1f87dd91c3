"""Kernel-side fixes for what JupyterLab showed (issue 11), checked with jupyter_client: the
replies JupyterLab builds its prompts, tracebacks, completer and tooltip from. The same
behaviour is checked through a real browser in test_browser.py.
"""

import time

import pytest

from conftest import FIRST_CELL_TIMEOUT, Kernel, result_of, shell_reply


def test_aborted_cells_get_no_execution_count(warm):
    """Finding 2: cells skipped after an error are answered like ipykernel does,
    {"status": "aborted"} without an execution_count (JupyterLab then shows `[ ]` and saves
    null), with no execute_input, and they do not advance the counter."""
    kc = warm.kc
    ids = [kc.execute(code) for code in ("1", 'panic!("boom")', "3", "4")]
    replies = [shell_reply(kc, i)["content"] for i in ids]
    first = replies[0]["execution_count"]
    assert replies[0]["status"] == "ok"
    assert replies[1]["status"] == "error" and replies[1]["execution_count"] == first + 1
    for reply in replies[2:]:
        assert reply["status"] == "aborted", reply
        assert "execution_count" not in reply, reply
    inputs = [
        m for m in warm.drain_iopub(1.0)
        if m["msg_type"] == "execute_input" and m["parent_header"].get("msg_id") in ids[2:]
    ]
    assert inputs == []
    content, _ = warm.execute("5")
    assert content["execution_count"] == first + 2, "aborted cells advanced the counter"


def test_panic_alone_names_the_cell_line(warm):
    """Finding 3: a panic in a rewritten line (here the cell's final expression) points at
    the cell's line, not at `code rustloop generated for this cell`."""
    content, outputs = warm.execute('// first line\npanic!("boom")')
    assert content["status"] == "error"
    traceback = "\n".join(content["traceback"])
    assert "cell line 2" in traceback, traceback
    assert "generated" not in traceback, traceback
    content, _ = warm.execute('let v = vec![1];\nlet _n = 0;\nlet y = v[5];')
    assert "cell line 3" in "\n".join(content["traceback"]), content["traceback"]


def complete(kc, code, cursor=None):
    msg_id = kc.complete(code, len(code) if cursor is None else cursor)
    return shell_reply(kc, msg_id)["content"]


def inspect(kc, code):
    return shell_reply(kc, kc.inspect(code, len(code)))["content"]


def once_analysis_answers(request, answered, seconds=120):
    """Repeats `request()` until `answered(reply)`: rust-analyzer loads on the first request,
    and until it is ready the kernel answers from what it knows."""
    deadline = time.monotonic() + seconds
    while True:
        reply = request()
        if answered(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


def by_analysis(reply):
    return reply["metadata"].get("rustloop_source") == "rust-analyzer"


def test_completion_answers_from_what_is_known_before_analysis_is_ready(kernel):
    """Issue "speed floor": right after a cell, before rust-analyzer has loaded, completion
    still offers the session's names and the `:` commands."""
    content, _ = kernel.execute("let counter_total = 5u32;\nfn compute_total() -> u32 { 1 }")
    assert content["status"] == "ok", content
    assert "counter_total" in complete(kernel.kc, "counter_t")["matches"]
    assert "compute_total" in complete(kernel.kc, "compute_t")["matches"]
    assert ":vars" in complete(kernel.kc, ":va")["matches"]


def test_completion_names_exact_and_prefix_first_no_private(warm):
    """Finding 5: `tokio::time::sl` offers `sleep` first, names only, no private module."""
    content = once_analysis_answers(lambda: complete(warm.kc, "tokio::time::sl"), by_analysis)
    matches = content["matches"]
    assert matches[:2] == ["sleep", "sleep_until"], matches
    assert all("(" not in m and not m.endswith("::") for m in matches), matches
    assert "sleep::" not in matches
    start, end = content["cursor_start"], content["cursor_end"]
    assert "tokio::time::sl"[start:end] == "sl", (start, end)
    # the private module `tokio::time::sleep` is not offered after `tokio::time::`
    matches = once_analysis_answers(lambda: complete(warm.kc, "tokio::time::"), by_analysis)[
        "matches"
    ]
    assert "interval" in matches and "instant" not in matches, matches


def test_inspect_hides_rustdoc_hidden_lines(warm):
    """Finding 6: the tooltip of `tokio::spawn` shows its docs as rustdoc renders them."""
    content = once_analysis_answers(lambda: inspect(warm.kc, "tokio::spawn"), lambda c: c["found"])
    assert content["found"], content
    for mime in ("text/plain", "text/html"):
        text = content["data"][mime]
        assert "spawn" in text
        lines = [line.strip() for line in text.splitlines()]
        hidden = [line for line in lines if line == "#" or line.startswith("# ")]
        assert hidden == [], (mime, hidden)
        assert "drop(socket)" not in text, mime


def test_history_search_with_a_star_in_the_code(warm):
    """Finding 7: after `6 * 7`, the glob `6 *` finds it (SQLite GLOB, as ipykernel)."""
    content, _ = warm.execute("6 * 7")
    assert content["status"] == "ok"
    kc = warm.kc
    for pattern in ("6 *", "6 ? 7", "*[*] 7"):
        msg_id = kc.history(hist_access_type="search", pattern=pattern, output=False, raw=True)
        found = [h[2] for h in shell_reply(kc, msg_id)["content"]["history"]]
        assert "6 * 7" in found, (pattern, found)


def test_late_task_output_stays_under_its_cell(warm):
    """Finding 4: a task spawned in cell A prints after cell B ran; the output belongs to A
    (more cases in test_task_output.py)."""
    kc = warm.kc
    a = kc.execute(
        "tokio::spawn(async {\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;\n"
        '    println!("late from A");\n'
        "});"
    )
    assert shell_reply(kc, a)["content"]["status"] == "ok"
    b = kc.execute("1 + 1")
    assert shell_reply(kc, b)["content"]["status"] == "ok"
    parents = [
        m["parent_header"].get("msg_id")
        for m in warm.drain_iopub(4.0)
        if m["msg_type"] == "stream" and "late from A" in m["content"]["text"]
    ]
    assert parents == [a], f"late output went to {parents}, A is {a}, B is {b}"


@pytest.mark.timeout(1200)
def test_first_build_shows_progress_not_an_error(tmp_path, monkeypatch):
    """Finding 8: on a cold cache the first cell shows one display updated in place (what is
    compiling, how far, an estimate) and finalized when done, instead of a stderr banner."""
    monkeypatch.setenv("RUSTLOOP_CACHE_DIR", str(tmp_path / "cache"))
    k = Kernel()
    try:
        content, outputs = k.execute("40 + 2", timeout=FIRST_CELL_TIMEOUT)
        assert content["status"] == "ok", content
        assert not any(t == "stream" and c["name"] == "stderr" for t, c in outputs), outputs
        displays = [c for t, c in outputs if t == "display_data"]
        assert len(displays) == 1, outputs
        display_id = displays[0]["transient"]["display_id"]
        assert "compiling tokio" in displays[0]["data"]["text/plain"]
        assert "<progress" in displays[0]["data"]["text/html"]
        updates = [c for t, c in outputs if t == "update_display_data"]
        late = [
            m["content"] for m in k.drain_iopub(3.0) if m["msg_type"] == "update_display_data"
        ]
        updates += late
        assert updates and all(u["transient"]["display_id"] == display_id for u in updates)
        texts = [u["data"]["text/plain"] for u in updates]
        assert any(" of about " in t and " s so far" in t for t in texts), texts
        assert "compiled tokio and the rustloop runtime in" in texts[-1], texts
        assert result_of(outputs) == "42"
    finally:
        k.shutdown()
