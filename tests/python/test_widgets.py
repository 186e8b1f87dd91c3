"""Jupyter widgets and comms on a real kernel, through jupyter_client.

The client plays the widget front end (what @jupyter-widgets/base does in JupyterLab): it reads
the comm_open/comm_msg messages the kernel publishes and sends comm messages back on shell.
Widget states are compared key for key with ipywidgets 8's own (the Python reference
implementation of the same protocol), so JupyterLab's widget manager gets the models it expects.
"""

import queue
import re
import time
import uuid

import pytest

from conftest import FIRST_CELL_TIMEOUT, result_of

ipywidgets = pytest.importorskip("ipywidgets")

VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WAIT = 60


@pytest.fixture(scope="module")
def k(kernel):
    content, _ = kernel.execute(
        "use rustloop::widgets::*;\nlet warm_marker = 1u8;", timeout=FIRST_CELL_TIMEOUT
    )
    assert content["status"] == "ok", content
    return kernel


class Iopub:
    """Every iopub message from now on, whole (with buffers and metadata)."""

    def __init__(self, kernel):
        self.kc = kernel.kc
        self.seen = []

    def until(self, predicate, timeout=WAIT, what="message"):
        for msg in self.seen:
            if predicate(msg):
                return msg
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if predicate(msg):
                return msg
        raise AssertionError(f"no {what} within {timeout}s; saw {[m['msg_type'] for m in self.seen]}")

    def comm(self, msg_type, comm_id=None, method=None, timeout=WAIT):
        def match(msg):
            if msg["msg_type"] != msg_type:
                return False
            content = msg["content"]
            if comm_id is not None and content.get("comm_id") != comm_id:
                return False
            return method is None or content.get("data", {}).get("method") == method

        return self.until(match, timeout, f"{msg_type} {comm_id or ''} {method or ''}")


def run(k, code, timeout=WAIT * 2, io=None):
    """Runs a cell; returns (reply content, its iopub messages, whole). Every iopub message
    read on the way also goes to `io`, if given (a task's messages may come meanwhile)."""
    msg_id = k.kc.execute(code)
    reply = k.kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.kc.get_shell_msg(timeout=timeout)
    msgs = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msg = k.kc.get_iopub_msg(timeout=timeout)
        if io is not None:
            io.seen.append(msg)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        msgs.append(msg)
    return reply["content"], msgs


def outputs(msgs):
    return [(m["msg_type"], m["content"]) for m in msgs]


def send_comm(k, msg_type, content, buffers=None):
    msg = k.kc.session.msg(msg_type, content)
    k.kc.session.send(k.kc.shell_channel.socket, msg, buffers=buffers or [])
    return msg["header"]["msg_id"]


def opened(msgs):
    """comm_open messages of jupyter.widget, by comm id."""
    return {
        m["content"]["comm_id"]: m
        for m in msgs
        if m["msg_type"] == "comm_open" and m["content"]["target_name"] == "jupyter.widget"
    }


def view_id(msgs):
    results = [m["content"]["data"] for m in msgs if m["msg_type"] == "execute_result"]
    assert results, f"no execute_result in {[m['msg_type'] for m in msgs]}"
    view = results[0][VIEW_MIME]
    assert view["version_major"] == 2 and view["version_minor"] == 0
    return view["model_id"]


def comm_info(k, target=None):
    k.kc.comm_info(target_name=target)
    reply = k.kc.get_shell_msg(timeout=WAIT)
    while reply["msg_type"] != "comm_info_reply":
        reply = k.kc.get_shell_msg(timeout=WAIT)
    assert reply["content"]["status"] == "ok"
    return reply["content"]["comms"]


def wait_for_value(k, expr, expected, timeout=WAIT):
    """Evaluates `expr` in cells until its text/plain is `expected`."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        content, msgs = run(k, expr)
        assert content["status"] == "ok", content
        last = result_of(outputs(msgs))
        if last == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{expr} stayed {last!r}, expected {expected!r}")


# --------------------------------------------------------------------------------------------


def test_kernel_info_names_supported_features(k):
    k.kc.kernel_info()
    reply = k.kc.get_shell_msg(timeout=WAIT)
    while reply["msg_type"] != "kernel_info_reply":
        reply = k.kc.get_shell_msg(timeout=WAIT)
    # JEP 92 lists optional features (debugger, kernel subshells); rustloop has neither.
    assert reply["content"]["supported_features"] == []


REFERENCE = {
    "IntSliderModel": lambda: ipywidgets.IntSlider(value=3, min=0, max=10, description="speed"),
    "FloatSliderModel": lambda: ipywidgets.FloatSlider(value=0.5, min=0.0, max=2.0),
    "IntProgressModel": lambda: ipywidgets.IntProgress(value=2, min=0, max=5),
    "ButtonModel": lambda: ipywidgets.Button(description="go"),
    "CheckboxModel": lambda: ipywidgets.Checkbox(value=True),
    "TextModel": lambda: ipywidgets.Text(value="hi"),
    "DropdownModel": lambda: ipywidgets.Dropdown(options=["a", "b", "c"]),
    "LabelModel": lambda: ipywidgets.Label(value="lbl"),
    "HTMLModel": lambda: ipywidgets.HTML(value="<b>x</b>"),
    "HBoxModel": lambda: ipywidgets.HBox([]),
    "VBoxModel": lambda: ipywidgets.VBox([]),
    "OutputModel": lambda: ipywidgets.Output(),
}

ALL_WIDGETS = """
let all_widgets = (
    IntSlider::new(3, 0, 10).description("speed"),
    FloatSlider::new(0.5, 0.0, 2.0),
    IntProgress::new(2, 0, 5),
    Button::new("go"),
    Checkbox::new(true),
    Text::new("hi"),
    Dropdown::new(["a", "b", "c"]),
    Label::new("lbl"),
    HTML::new("<b>x</b>"),
    Output::new(),
);
let boxes = (HBox::new(&[&all_widgets.0, &all_widgets.5]), VBox::new(&[&all_widgets.3]));
"""


def test_comm_open_states_match_ipywidgets(k):
    content, msgs = run(k, ALL_WIDGETS)
    assert content["status"] == "ok", content
    models = opened(msgs)
    for m in models.values():
        assert m["metadata"]["version"].startswith("2."), m["metadata"]
        assert m["content"]["data"]["buffer_paths"] == []
    # the state as the front end has it: comm_open's, then each update (builders send those)
    states = {cid: dict(m["content"]["data"]["state"]) for cid, m in models.items()}
    for m in msgs:
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update":
            states[m["content"]["comm_id"]].update(m["content"]["data"]["state"])
    by_name = {}
    for cid, state in states.items():
        by_name.setdefault(state["_model_name"], []).append((cid, state))
    for name, make in REFERENCE.items():
        assert name in by_name, f"{name} not opened; got {sorted(by_name)}"
        cid, state = by_name[name][0]
        reference = make().get_state()
        assert set(state) == set(reference), (name, set(state) ^ set(reference))
        for key in ("_model_module", "_model_module_version", "_view_name", "_view_module",
                    "_view_module_version"):
            assert state[key] == reference[key], (name, key)
        # layout and style are references to models opened before this one
        for part in ("layout", "style"):
            if part in state:
                ref = state[part]
                assert ref.startswith("IPY_MODEL_"), ref
                sub = states[ref[len("IPY_MODEL_"):]]
                ref_sub = getattr(make(), part).get_state()
                assert sub["_model_name"] == ref_sub["_model_name"]
                assert set(sub) == set(ref_sub), (name, part, set(sub) ^ set(ref_sub))
        for key in ("value", "min", "max", "description", "_options_labels", "index"):
            if key in reference and key in state:
                expected = reference[key]
                expected = list(expected) if isinstance(expected, tuple) else expected
                assert state[key] == expected, (name, key, state[key], expected)
    hbox = by_name["HBoxModel"][0][1]
    assert len(hbox["children"]) == 2
    assert all(c[len("IPY_MODEL_"):] in states for c in hbox["children"])


def test_display_and_update_from_the_client(k):
    content, msgs = run(k, 'let s = IntSlider::new(1, 0, 100).description("rate");\ns')
    assert content["status"] == "ok", content
    sid = view_id(msgs)
    assert sid in opened(msgs)
    content, _ = run(k, """
let mut seen = s.watch();
let watcher = tokio::spawn(async move {
    seen.changed().await.unwrap();
    let v = *seen.borrow();
    println!("watcher woke with {v}");
    v
});
""")
    assert content["status"] == "ok", content
    send_comm(k, "comm_msg", {"comm_id": sid, "data": {
        "method": "update", "state": {"value": 42}, "buffer_paths": []}})
    wait_for_value(k, "s.value()", "42")
    content, msgs = run(k, "watcher.await.unwrap()")
    assert result_of(outputs(msgs)) == "42"


def test_set_value_from_a_task_updates_the_front_end(k):
    content, msgs = run(k, "let p = IntProgress::new(0, 0, 10);\np")
    pid = view_id(msgs)
    io = Iopub(k)
    content, _ = run(k, "tokio::spawn({ let p = p.clone(); async move { p.set_value(7) } });",
                     io=io)
    assert content["status"] == "ok", content
    update = io.comm("comm_msg", pid, "update")
    assert update["content"]["data"]["state"] == {"value": 7}
    wait_for_value(k, "p.value()", "7")


def test_request_state_is_answered_under_the_request(k):
    content, msgs = run(k, 'let t = Text::new("abc");\nt')
    tid = view_id(msgs)
    io = Iopub(k)
    msg_id = send_comm(k, "comm_msg", {"comm_id": tid, "data": {"method": "request_state"}})
    update = io.until(lambda m: m["msg_type"] == "comm_msg"
                      and m["parent_header"].get("msg_id") == msg_id, what="request_state reply")
    data = update["content"]["data"]
    assert data["method"] == "update"
    assert data["state"]["value"] == "abc"
    assert data["state"]["_model_name"] == "TextModel"
    # the request got busy/idle like any shell request (the front end's throttle waits for idle)
    io.until(lambda m: m["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id
             and m["content"]["execution_state"] == "idle", what="idle of the comm_msg")


def test_comm_info_filters_by_target(k):
    content, msgs = run(k, "let c = Checkbox::new(false);\nc")
    cid = view_id(msgs)
    widgets = comm_info(k, "jupyter.widget")
    assert widgets[cid] == {"target_name": "jupyter.widget"}
    assert cid in comm_info(k)
    assert comm_info(k, "no.such.target") == {}


def test_drop_closes_the_comm_when_the_last_clone_goes(k):
    content, msgs = run(k, 'let d = Dropdown::new(["x", "y"]);\nlet d2 = d.clone();\nd')
    did = view_id(msgs)
    parts = [r[len("IPY_MODEL_"):] for r in (opened(msgs)[did]["content"]["data"]["state"][p]
                                               for p in ("layout", "style"))]
    content, msgs = run(k, "drop(d);")
    assert content["status"] == "ok", content
    assert not [m for m in msgs if m["msg_type"] == "comm_close"]
    assert did in comm_info(k, "jupyter.widget")
    content, msgs = run(k, "drop(d2);")
    closed = {m["content"]["comm_id"] for m in msgs if m["msg_type"] == "comm_close"}
    assert closed == {did, *parts}, closed
    assert did not in comm_info(k)


def test_button_clicks_arrive_as_a_stream(k):
    content, msgs = run(k, 'let b = Button::new("click me");\nb')
    bid = view_id(msgs)
    content, _ = run(k, """
let mut clicks = b.clicks();
let counter = tokio::spawn(async move {
    let mut n = 0;
    while clicks.next().await.is_some() {
        n += 1;
        if n == 3 { break; }
    }
    n
});
""")
    assert content["status"] == "ok", content
    for _ in range(3):
        send_comm(k, "comm_msg", {"comm_id": bid, "data": {
            "method": "custom", "content": {"event": "click"}}})
    content, msgs = run(k, "counter.await.unwrap()")
    assert content["status"] == "ok", content
    assert result_of(outputs(msgs)) == "3"


def test_comm_msg_is_handled_while_a_cell_runs(k):
    content, msgs = run(k, "let cb = Checkbox::new(false);\ncb")
    cid = view_id(msgs)
    io = Iopub(k)
    msg_id = k.kc.execute("""
let mut w = cb.watch();
println!("waiting");
w.changed().await.unwrap();
println!("cell woke: {}", *w.borrow());
""")
    # once the cell waits (it has subscribed), toggle the checkbox from the "front end"
    io.until(lambda m: m["msg_type"] == "stream" and m["content"]["text"] == "waiting\n"
             and m["parent_header"].get("msg_id") == msg_id, what="the cell waiting")
    send_comm(k, "comm_msg", {"comm_id": cid, "data": {
        "method": "update", "state": {"value": True}, "buffer_paths": []}})
    reply = k.kc.get_shell_msg(timeout=WAIT * 2)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.kc.get_shell_msg(timeout=WAIT * 2)
    assert reply["content"]["status"] == "ok", reply["content"]
    out = io.until(lambda m: m["msg_type"] == "stream" and "woke" in m["content"]["text"]
                   and m["parent_header"].get("msg_id") == msg_id, what="cell output")
    assert out["content"]["text"] == "cell woke: true\n"


def test_control_comm_answers_request_states(k):
    content, msgs = run(k, "let h = HTML::new(\"<i>saved</i>\");\nh")
    hid = view_id(msgs)
    io = Iopub(k)
    control = uuid.uuid4().hex
    send_comm(k, "comm_open", {"comm_id": control, "target_name": "jupyter.widget.control",
                               "data": {}})
    send_comm(k, "comm_msg", {"comm_id": control, "data": {"method": "request_states"}})
    reply = io.comm("comm_msg", control, "update_states")
    states = reply["content"]["data"]["states"]
    assert states[hid]["model_name"] == "HTMLModel"
    assert states[hid]["model_module"] == "@jupyter-widgets/controls"
    assert states[hid]["state"]["value"] == "<i>saved</i>"
    assert reply["content"]["data"]["buffer_paths"] == []
    send_comm(k, "comm_close", {"comm_id": control, "data": {}})
    end = time.monotonic() + WAIT
    while control in comm_info(k) and time.monotonic() < end:
        time.sleep(0.1)
    assert control not in comm_info(k)


def test_binary_buffers_both_ways(k):
    io = Iopub(k)
    content, msgs = run(k, """
rustloop::comm::register_target("echo", |comm, _open| {
    let reply = comm.clone();
    comm.on_message(move |m| reply.send(&m.data.to_json(), &m.buffers));
});
let blob = rustloop::comm::Comm::open("blob", r#"{"kind": "bytes"}"#, "{}", &[vec![0u8, 1, 255]]);
blob.id().to_string()
""")
    assert content["status"] == "ok", content
    opening = [m for m in msgs if m["msg_type"] == "comm_open"
               and m["content"]["target_name"] == "blob"][0]
    assert [bytes(b) for b in opening["buffers"]] == [b"\x00\x01\xff"]
    assert opening["content"]["data"] == {"kind": "bytes"}
    echo = uuid.uuid4().hex
    send_comm(k, "comm_open", {"comm_id": echo, "target_name": "echo", "data": {}})
    send_comm(k, "comm_msg", {"comm_id": echo, "data": {"n": 1}}, buffers=[b"\xde\xad", b""])
    back = io.comm("comm_msg", echo)
    assert back["content"]["data"] == {"n": 1}
    assert [bytes(b) for b in back["buffers"]] == [b"\xde\xad", b""]


def test_output_widget_takes_text_and_displays_from_a_task(k):
    content, msgs = run(k, "let out = Output::new();\nout")
    oid = view_id(msgs)
    io = Iopub(k)
    content, _ = run(k, """
let o = out.clone();
tokio::spawn(async move {
    o.append_stdout("tick 1\\n");
    o.append_stdout("tick 2\\n");
    o.display(&rustloop::Html::new("<b>done</b>"));
});
""", io=io)
    assert content["status"] == "ok", content

    def last_outputs(m):
        return (m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == oid
                and len(m["content"]["data"]["state"].get("outputs", [])) == 2)

    update = io.until(last_outputs, what="output widget update")
    shown = update["content"]["data"]["state"]["outputs"]
    assert shown[0] == {"output_type": "stream", "name": "stdout", "text": "tick 1\ntick 2\n"}
    assert shown[1]["output_type"] == "display_data"
    assert shown[1]["data"]["text/html"] == "<b>done</b>"
    content, msgs = run(k, "out.clear(); out.len()")
    assert result_of(outputs(msgs)) == "0"


def test_interact_reruns_when_a_widget_changes(k):
    content, msgs = run(k, """
let a = IntSlider::new(1, 0, 10);
let b = Checkbox::new(false);
let summary = Label::new("");
let job = {
    let (a2, b2, s2) = (a.clone(), b.clone(), summary.clone());
    interact(&[&a, &b], move || s2.set_value(&format!("a={} b={}", a2.value(), b2.value())))
};
a
""")
    assert content["status"] == "ok", content
    aid = view_id(msgs)
    wait_for_value(k, "summary.value()", '"a=1 b=false"')
    send_comm(k, "comm_msg", {"comm_id": aid, "data": {
        "method": "update", "state": {"value": 6}, "buffer_paths": []}})
    wait_for_value(k, "summary.value()", '"a=6 b=false"')
    content, _ = run(k, "b.set_value(true);")
    wait_for_value(k, "summary.value()", '"a=6 b=true"')


def test_widgets_survive_an_interrupt(k):
    content, msgs = run(k, "let keep = FloatSlider::new(1.5, 0.0, 3.0);\nkeep")
    kid = view_id(msgs)
    msg_id = k.kc.execute("tokio::time::sleep(std::time::Duration::from_secs(60)).await;")
    io = Iopub(k)
    io.until(lambda m: m["msg_type"] == "execute_input"
             and m["parent_header"].get("msg_id") == msg_id, what="execute_input")
    time.sleep(1.0)
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=WAIT)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.kc.get_shell_msg(timeout=WAIT)
    assert reply["content"]["status"] == "error"
    assert kid in comm_info(k, "jupyter.widget")
    send_comm(k, "comm_msg", {"comm_id": kid, "data": {
        "method": "update", "state": {"value": 2.25}, "buffer_paths": []}})
    wait_for_value(k, "keep.value()", "2.25")
    assert not re.search(r"comm_close", " ".join(m["msg_type"] for m in io.seen
                                                   if m["content"].get("comm_id") == kid))
