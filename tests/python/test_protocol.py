"""Jupyter protocol coverage with jupyter_client (DESIGN.md sections 6 and 7): signatures and
malformed input, stop_on_error, execution counts, user_expressions, comms, history,
is_complete, stdin, display ids and result bundles. The kernel's life (control during a cell,
shutdown, restart, SIGINT, transports, no orphans) is in test_lifecycle.py.

Most tests share one kernel (`warm`); a test that needs a pristine execution counter takes a
`fresh_kernel`.
"""

import hashlib
import hmac
import json
import queue
import time
import uuid

import pytest
from jupyter_client.session import Session

from conftest import (
    CELL_TIMEOUT,
    assert_responsive,
    control_request,
    result_of,
    shell_replies_until,
    stdout_of,
)

# --------------------------------------------------------------------------------------------
# helpers


def iopub_for(k, msg_id, timeout):
    """All iopub messages (including status/execute_input) of one request, through idle."""
    msgs = []
    end = time.monotonic() + timeout
    while True:
        msg = k.kc.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs


def last_count(k):
    content, _ = k.execute("()")
    assert content["status"] == "ok", content
    return content["execution_count"]


# --------------------------------------------------------------------------------------------
# (a) security: signatures, malformed input


def _forged_execute(session, code):
    return session.msg(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
    )


def test_forged_signatures_are_not_executed(warm, tmp_path):
    k = warm
    kc = k.kc
    sock = kc.shell_channel.socket
    before = last_count(k)

    markers = {name: tmp_path / f"forged-{name}" for name in ("wrong-key", "empty-sig", "tampered")}

    def code_for(marker):
        return (
            f'std::fs::write(r#"{marker}"#, "pwned").unwrap();\n'
            f'println!("FORGED-EXECUTED");\n'
            f"let forged_var = 666u32;"
        )

    # 1. signed with the wrong key
    wrong = Session(key=b"wrong", username=kc.session.username)
    m1 = _forged_execute(wrong, code_for(markers["wrong-key"]))
    wrong.send(sock, m1)
    # 2. no signature at all (an unsigned session: empty signature frame)
    unsigned = Session(key=b"", username=kc.session.username)
    m2 = _forged_execute(unsigned, code_for(markers["empty-sig"]))
    unsigned.send(sock, m2)
    # 3. signed with the right key, then the content changed after signing
    m3 = _forged_execute(kc.session, "()")
    frames = kc.session.serialize(m3)
    delim = frames.index(b"<IDS|MSG>")
    content = json.loads(frames[delim + 5])
    content["code"] = code_for(markers["tampered"])
    frames[delim + 5] = json.dumps(content).encode()
    sock.send_multipart(frames)

    forged_ids = {m1["header"]["msg_id"], m2["header"]["msg_id"], m3["header"]["msg_id"]}

    # A real request after the forged ones: shell requests are handled in order, so once it
    # is answered the forged ones would have run already.
    real_id = kc.execute("7 * 6")
    shell = shell_replies_until(kc, real_id, CELL_TIMEOUT)
    real = shell[-1]["content"]
    assert real["status"] == "ok", real
    assert real["execution_count"] == before + 1, "a forged request advanced the counter"
    replied_to = {m["parent_header"].get("msg_id") for m in shell}
    assert not (replied_to & forged_ids), "the kernel replied to a forged request"

    iopub = k.drain_iopub(1.5)
    for msg in iopub:
        assert msg["parent_header"].get("msg_id") not in forged_ids, msg
        if msg["msg_type"] == "stream":
            assert "FORGED-EXECUTED" not in msg["content"]["text"]
    for name, marker in markers.items():
        assert not marker.exists(), f"forged request ({name}) was executed"

    content, outputs = k.execute("forged_var")
    assert content["status"] == "error", "a forged cell defined `forged_var`"
    assert_responsive(k)

    # positive control: the same code, properly signed, does leave its marker
    control = tmp_path / "properly-signed"
    content, outputs = k.execute(code_for(control))
    assert content["status"] == "ok", content
    assert control.exists() and "FORGED-EXECUTED" in stdout_of(outputs)


def test_malformed_input_does_not_crash(warm):
    k = warm
    kc = k.kc
    sock = kc.shell_channel.socket
    key = kc.session.key

    def signed(parts):
        h = hmac.new(key, digestmod=hashlib.sha256)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    header = json.dumps(kc.session.msg_header("execute_request"), default=str).encode()
    bad_frames = [
        [b"just one frame"],
        [b"<IDS|MSG>"],
        [b"<IDS|MSG>", b"sig-only"],
        [b"<IDS|MSG>", b"", b"{}", b"{}"],  # too few frames
        [b"<IDS|MSG>", b"", b"\xff\xfe not utf8", b"{}", b"{}", b"{}"],
        [b"no", b"delimiter", b"here", b"{}", b"{}", b"{}"],
        [b"<IDS|MSG>", b"", b"", b"", b"", b""],
    ]
    # correctly signed, but not JSON / not an object / missing fields
    for parts in (
        [b"{not json", b"{}", b"{}", b"{}"],
        [header, b"{}", b"{}", b"[1, 2"],
        [b"[]", b"{}", b"{}", b"{}"],
        [b"{}", b"{}", b"{}", b"{}"],
        [b'{"msg_type": 5, "msg_id": null}', b"{}", b"{}", b"{}"],
        [header, b"{}", b"{}", b'{"code": 12}'],
    ):
        bad_frames.append([b"<IDS|MSG>", signed(parts), *parts])
    for frames in bad_frames:
        sock.send_multipart(frames)

    # unknown message type, properly signed: ignored (or answered), never fatal
    kc.shell_channel.send(kc.session.msg("no_such_request", {"x": 1}))
    control_msg = kc.session.msg("frobnicate_request", {})
    kc.control_channel.send(control_msg)

    # a large message (8 MiB of code) on is_complete
    big = "let x = 1;\n" * (8 * 1024 * 1024 // 11)
    big_id = kc.is_complete(big)
    replies = shell_replies_until(kc, big_id, 120)
    assert replies[-1]["content"]["status"] == "complete"

    assert k.km.is_alive()
    assert_responsive(k)
    reply, _ = control_request(kc, "kernel_info_request", timeout=30)
    assert reply["content"]["status"] == "ok"


# --------------------------------------------------------------------------------------------
# (c) stop_on_error


@pytest.mark.timeout(240)
def test_stop_on_error_aborts_queued_cells(warm):
    k = warm
    kc = k.kc
    ids = [
        kc.execute("let oops: u32 = \"not a number\";"),  # compile error
        kc.execute('println!("SECOND-RAN");'),
        kc.execute('println!("THIRD-RAN");'),
    ]
    replies = {}
    while len(replies) < 3:
        msg = kc.get_shell_msg(timeout=CELL_TIMEOUT)
        if msg["parent_header"].get("msg_id") in ids:
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[ids[0]]["status"] == "error"
    assert replies[ids[0]]["ename"] == "CompilationError"
    assert replies[ids[1]]["status"] == "aborted", replies[ids[1]]
    assert replies[ids[2]]["status"] == "aborted", replies[ids[2]]
    iopub = k.drain_iopub(1.0)
    texts = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
    assert "SECOND-RAN" not in texts and "THIRD-RAN" not in texts

    # a panic aborts the queue too
    ids = [
        kc.execute('panic!("first fails")'),
        kc.execute('println!("SECOND-RAN");'),
    ]
    replies = {}
    while len(replies) < 2:
        msg = kc.get_shell_msg(timeout=CELL_TIMEOUT)
        if msg["parent_header"].get("msg_id") in ids:
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[ids[0]]["status"] == "error" and replies[ids[0]]["ename"] == "panic"
    assert replies[ids[1]]["status"] == "aborted", replies[ids[1]]
    k.drain_iopub(0.5)

    # the abort only covers what was queued: a request sent afterwards runs
    content, outputs = k.execute('println!("after abort");')
    assert content["status"] == "ok", content
    assert "after abort" in stdout_of(outputs)


@pytest.mark.timeout(240)
def test_stop_on_error_false_runs_queued_cells(warm):
    k = warm
    kc = k.kc
    ids = [
        kc.execute("let oops: u32 = \"not a number\";", stop_on_error=False),
        kc.execute('println!("SECOND-RAN");', stop_on_error=False),
        kc.execute('println!("THIRD-RAN");', stop_on_error=False),
    ]
    replies = {}
    while len(replies) < 3:
        msg = kc.get_shell_msg(timeout=CELL_TIMEOUT)
        if msg["parent_header"].get("msg_id") in ids:
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[ids[0]]["status"] == "error"
    assert replies[ids[1]]["status"] == "ok", replies[ids[1]]
    assert replies[ids[2]]["status"] == "ok", replies[ids[2]]
    out = stdout_of(k.collect_iopub(ids[1])) + stdout_of(k.collect_iopub(ids[2]))
    assert "SECOND-RAN" in out and "THIRD-RAN" in out


# --------------------------------------------------------------------------------------------
# (d) execution_count, silent, store_history


@pytest.mark.timeout(300)
def test_execution_count_silent_and_store_history(fresh_kernel):
    k = fresh_kernel
    kc = k.kc
    content, outputs = k.execute("let first = 1;")
    assert content["status"] == "ok", content
    assert content["execution_count"] == 1

    content, outputs = k.execute("first + 1")
    assert content["execution_count"] == 2
    assert [c["execution_count"] for t, c in outputs if t == "execute_result"] == [2]

    # silent: runs, does not count, nothing on iopub but busy/idle
    msg_id = kc.execute(
        'let silent_var = 9u32;\nprintln!("SILENT-OUT");\nsilent_var + 1', silent=True
    )
    reply = shell_replies_until(kc, msg_id, CELL_TIMEOUT)[-1]["content"]
    assert reply["status"] == "ok", reply
    iopub = iopub_for(k, msg_id, CELL_TIMEOUT)
    assert [m["msg_type"] for m in iopub] == ["status", "status"], [
        (m["msg_type"], m["content"]) for m in iopub
    ]
    assert [m["content"]["execution_state"] for m in iopub] == ["busy", "idle"]

    content, outputs = k.execute("silent_var")
    assert content["status"] == "ok", "the silent cell did not run"
    assert result_of(outputs) == "9"
    assert content["execution_count"] == 3, "silent=True advanced execution_count"

    # store_history=False: runs, does not count, not in history
    content, outputs = k.execute("let unstored = 5u8;\nunstored * 2", store_history=False)
    assert content["status"] == "ok", content
    assert result_of(outputs) == "10"
    content, outputs = k.execute("unstored")
    assert result_of(outputs) == "5"
    assert content["execution_count"] == 4, "store_history=False advanced execution_count"

    kc.history(hist_access_type="tail", n=100, output=False, raw=True)
    reply = kc.get_shell_msg(timeout=30)
    codes = [h[2] for h in reply["content"]["history"]]
    assert codes == ["let first = 1;", "first + 1", "silent_var", "unstored"], codes


# --------------------------------------------------------------------------------------------
# (e) user_expressions


def test_user_expressions(warm):
    k = warm
    content, outputs = k.execute(
        "let ue = 21u64;",
        user_expressions={
            "double": "ue * 2",
            "text": 'format!("n={}", ue)',
            "broken": "no_such_variable_here",
        },
    )
    assert content["status"] == "ok", content
    ue = content["user_expressions"]
    assert ue["double"]["status"] == "ok"
    assert ue["double"]["data"]["text/plain"] == "42"
    assert ue["text"]["status"] == "ok"
    assert ue["text"]["data"]["text/plain"] == '"n=21"'
    assert ue["broken"]["status"] == "error"
    assert ue["broken"]["ename"]
    # user expressions are not cells: they leave no execute_result
    assert result_of(outputs) is None


# --------------------------------------------------------------------------------------------
# (f) comms


def test_comm_info_and_unknown_comm_open(warm):
    k = warm
    kc = k.kc
    kc.comm_info()
    reply = kc.get_shell_msg(timeout=30)
    while reply["msg_type"] != "comm_info_reply":
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["comms"] == {}

    comm_id = uuid.uuid4().hex
    k.drain_iopub(0.2)
    kc.shell_channel.send(
        kc.session.msg(
            "comm_open", {"comm_id": comm_id, "target_name": "no.such.target", "data": {}}
        )
    )
    closed = None
    end = time.monotonic() + 15
    while time.monotonic() < end and closed is None:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if msg["msg_type"] == "comm_close" and msg["content"].get("comm_id") == comm_id:
            closed = msg
    assert closed is not None, "no comm_close for a comm_open to an unknown target"

    # a comm_msg / comm_close to the unknown comm is harmless
    kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"a": 1}}))
    kc.shell_channel.send(kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}}))
    kc.comm_info()
    reply = kc.get_shell_msg(timeout=30)
    while reply["msg_type"] != "comm_info_reply":
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["comms"] == {}
    assert_responsive(k)


# --------------------------------------------------------------------------------------------
# (g) history


def test_history(warm):
    k = warm
    kc = k.kc
    tag = uuid.uuid4().hex[:8]
    cells = [f"let h_{tag}_a = 1;", f"let h_{tag}_b = 2;", f"h_{tag}_a + h_{tag}_b"]
    counts = []
    for code in cells:
        content, _ = k.execute(code)
        assert content["status"] == "ok", content
        counts.append(content["execution_count"])

    def history(**kw):
        kc.history(raw=True, **kw)
        reply = kc.get_shell_msg(timeout=30)
        while reply["msg_type"] != "history_reply":
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "ok"
        return reply["content"]["history"]

    tail = history(hist_access_type="tail", n=3, output=False)
    assert [h[2] for h in tail] == cells
    assert [h[1] for h in tail] == counts
    session = tail[0][0]

    tail_out = history(hist_access_type="tail", n=1, output=True)
    assert len(tail_out) == 1 and tail_out[0][2][0] == cells[2]
    assert len(tail_out[0][2]) == 2

    rng = history(
        hist_access_type="range", session=session, start=counts[1], stop=counts[2] + 1, output=False
    )
    assert [(h[1], h[2]) for h in rng] == [(counts[1], cells[1]), (counts[2], cells[2])]

    found = history(hist_access_type="search", pattern=f"let h_{tag}_*", output=False)
    assert [h[2] for h in found] == cells[:2]
    found = history(hist_access_type="search", pattern=f"*h_{tag}_?*", output=False, n=1)
    assert [h[2] for h in found] == [cells[2]]


# --------------------------------------------------------------------------------------------
# (h) is_complete


@pytest.mark.parametrize(
    "code,status",
    [
        ("1", "complete"),
        ("let x = 1;", "complete"),
        ("fn f() {}", "complete"),
        ("tokio::time::sleep(std::time::Duration::from_millis(1)).await;", "complete"),
        ("fn f() {", "incomplete"),
        ("let v = vec![1,", "incomplete"),
        ("if true {", "incomplete"),
        ('let s = "open string', "incomplete"),
        ("/* open comment", "incomplete"),
        ("let x = 1;)", "invalid"),
        ("fn f() }", "invalid"),
        ("let v = [1, 2);", "invalid"),
    ],
)
def test_is_complete(warm, code, status):
    kc = warm.kc
    kc.is_complete(code)
    reply = kc.get_shell_msg(timeout=30)
    while reply["msg_type"] != "is_complete_reply":
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == status, (code, reply["content"])
    if status == "incomplete":
        assert "indent" in reply["content"]


# --------------------------------------------------------------------------------------------
# stdin, display ids and execute_result bundles (sections 5 and 6)


def test_input_request_on_stdin(warm):
    k = warm
    kc = k.kc
    msg_id = kc.execute(
        'let in_name = rustloop::input("name? ").unwrap();\n'
        'let in_pw = rustloop::input_password("secret? ").unwrap();\n'
        "(in_name, in_pw.len())",
        allow_stdin=True,
    )
    req = kc.get_stdin_msg(timeout=CELL_TIMEOUT)
    assert req["msg_type"] == "input_request"
    assert req["parent_header"]["msg_id"] == msg_id
    assert req["content"] == {"prompt": "name? ", "password": False}
    kc.input("Ferris")
    req = kc.get_stdin_msg(timeout=60)
    assert req["content"] == {"prompt": "secret? ", "password": True}
    kc.input("hunter2")
    reply = shell_replies_until(kc, msg_id, CELL_TIMEOUT)[-1]["content"]
    assert reply["status"] == "ok", reply
    outputs = k.collect_iopub(msg_id)
    assert result_of(outputs) == '("Ferris", 7)'
    assert "hunter2" not in json.dumps([c for _, c in outputs])


def test_input_without_stdin_is_a_clear_error(warm):
    k = warm
    content, outputs = k.execute(
        'match rustloop::input("name? ") { Ok(_) => "ok".to_string(), Err(e) => e.to_string() }',
        allow_stdin=False,
    )
    assert content["status"] == "ok", content
    msg = result_of(outputs)
    assert "allow_stdin" in msg, msg
    # no input_request was sent
    with pytest.raises(queue.Empty):
        k.kc.get_stdin_msg(timeout=0.5)


def test_display_update_by_display_id(warm):
    k = warm
    content, outputs = k.execute(
        'let dd = rustloop::display(&rustloop::Html::new("<b>v1</b>".to_string()));\n'
        'dd.update(&rustloop::Html::new("<b>v2</b>".to_string()));'
    )
    assert content["status"] == "ok", content
    kinds = [t for t, _ in outputs]
    assert kinds == ["display_data", "update_display_data"], outputs
    first, update = outputs[0][1], outputs[1][1]
    display_id = first["transient"]["display_id"]
    assert display_id and update["transient"]["display_id"] == display_id
    assert first["data"]["text/html"] == "<b>v1</b>"
    assert update["data"]["text/html"] == "<b>v2</b>"
    # an update from a later cell targets the same display
    content, outputs = k.execute('dd.update(&rustloop::Html::new("<b>v3</b>".to_string()));')
    updates = [c for t, c in outputs if t == "update_display_data"]
    assert updates and updates[0]["transient"]["display_id"] == display_id


@pytest.mark.parametrize(
    "code,mime",
    [
        ('rustloop::Html::new("<p>h</p>".to_string())', "text/html"),
        ('rustloop::Json::new(r#"{"a": 1}"#.to_string())', "application/json"),
        ("rustloop::Png(vec![137, 80, 78, 71])", "image/png"),
        (
            'rustloop::MimeBundle::new().with("application/x-custom", "abc".to_string())',
            "application/x-custom",
        ),
    ],
)
def test_execute_result_bundle_always_has_text_plain(warm, code, mime):
    """DESIGN.md section 5: an execute_result bundle always carries text/plain."""
    content, outputs = warm.execute(code)
    assert content["status"] == "ok", content
    results = [c for t, c in outputs if t == "execute_result"]
    assert len(results) == 1, outputs
    data = results[0]["data"]
    assert mime in data, data
    assert "text/plain" in data, f"execute_result without text/plain: {data}"
