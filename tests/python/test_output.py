"""Output a notebook user sees (DESIGN.md section 5): stream batching and ordering, partial
lines, background output routing, rich results, display/update/clear, progress bars."""

import time

from conftest import result_of, stderr_of, stdout_of


def streams(outputs):
    return [c for t, c in outputs if t == "stream"]


def test_20000_lines_arrive_complete_in_few_messages(kernel):
    content, outputs = kernel.execute('for i in 0..20000 { println!("line {i}"); }')
    assert content["status"] == "ok"
    text = stdout_of(outputs)
    assert text == "".join(f"line {i}\n" for i in range(20000))
    # batched: a handful of stream messages, not one per line
    assert len(streams(outputs)) <= 30, len(streams(outputs))


def test_alternating_stdout_stderr_complete_before_idle_every_time(kernel):
    code = """
for i in 0..500 {
    println!("out {i}");
    eprintln!("err {i}");
}
"""
    for _ in range(5):
        content, outputs = kernel.execute(code)
        assert content["status"] == "ok"
        # collect_iopub stops at idle: everything below arrived before it
        assert stdout_of(outputs) == "".join(f"out {i}\n" for i in range(500))
        assert stderr_of(outputs) == "".join(f"err {i}\n" for i in range(500))


def test_partial_line_appears_before_the_cell_ends(kernel):
    kernel.execute("use std::io::Write;")
    msg_id = kernel.kc.execute(
        'print!("Loading..."); std::io::stdout().flush().unwrap();\n'
        "tokio::time::sleep(std::time::Duration::from_secs(2)).await;\n"
        'println!(" done");'
    )
    start = time.monotonic()
    first_text_at = None
    text = ""
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            if first_text_at is None:
                first_text_at = time.monotonic() - start
            text += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            end = time.monotonic() - start
            break
    assert text == "Loading... done\n"
    # the partial line came while the cell was still sleeping, not with its end
    assert first_text_at is not None and end - first_text_at > 1.0, (first_text_at, end)


def test_background_output_goes_to_the_spawning_cell_while_it_runs(kernel):
    content, outputs = kernel.execute(
        "tokio::spawn(async { println!(\"from task\"); });\n"
        "tokio::time::sleep(std::time::Duration::from_millis(300)).await;"
    )
    assert content["status"] == "ok"
    assert "from task" in stdout_of(outputs)


def test_rich_result_bundles(kernel):
    _, outputs = kernel.execute('rustloop::Html::new("<table><tr><td>1</td></tr></table>")')
    assert "<table>" in result_of(outputs, "text/html")
    assert result_of(outputs, "text/plain")
    _, outputs = kernel.execute('rustloop::Json::new(r#"{"a": [1, 2]}"#)')
    assert result_of(outputs, "application/json") == {"a": [1, 2]}
    _, outputs = kernel.execute('rustloop::Markdown::new("# title")')
    assert result_of(outputs, "text/markdown") == "# title"
    _, outputs = kernel.execute("rustloop::Png(vec![0x89, b'P', b'N', b'G'])")
    assert result_of(outputs, "image/png") == "iVBORw=="


def test_evcxr_display_convention_still_works(kernel):
    kernel.execute(
        "struct Shown;\n"
        "impl Shown {\n"
        "    fn evcxr_display(&self) {\n"
        '        println!("EVCXR_BEGIN_CONTENT text/html\\n<i>shown</i>\\nEVCXR_END_CONTENT");\n'
        "    }\n"
        "}"
    )
    content, outputs = kernel.execute("Shown")
    assert content["status"] == "ok"
    assert result_of(outputs, "text/html") == "<i>shown</i>"


def test_display_update_and_clear(kernel):
    content, outputs = kernel.execute(
        'let shown = rustloop::display(&rustloop::Text::new("v1"));\n'
        'shown.update(&rustloop::Text::new("v2"));\n'
        "rustloop::clear_output(true);"
    )
    assert content["status"] == "ok"
    kinds = [t for t, _ in outputs]
    assert kinds == ["display_data", "update_display_data", "clear_output"], kinds
    display_id = outputs[0][1]["transient"]["display_id"]
    assert outputs[1][1]["transient"]["display_id"] == display_id
    assert outputs[1][1]["data"]["text/plain"] == "v2"
    assert outputs[2][1]["wait"] is True


def test_display_updated_from_a_spawned_task_after_the_cell(kernel):
    content, outputs = kernel.execute(
        'let clock = rustloop::display(&rustloop::Text::new("tick 0"));\n'
        "let clock_task = tokio::spawn(async move {\n"
        "    tokio::time::sleep(std::time::Duration::from_millis(500)).await;\n"
        "    for i in 1..=3 {\n"
        "        tokio::time::sleep(std::time::Duration::from_millis(100)).await;\n"
        '        clock.update(&rustloop::Text::new(format!("tick {i}")));\n'
        "    }\n"
        "});"
    )
    assert content["status"] == "ok"
    display_id = [c for t, c in outputs if t == "display_data"][0]["transient"]["display_id"]
    # The first cell has finished; the task updates its display while this one runs.
    content, outputs = kernel.execute(
        "tokio::time::sleep(std::time::Duration::from_millis(1500)).await;\n"
        "clock_task.await.unwrap();"
    )
    assert content["status"] == "ok"
    updates = [c for t, c in outputs if t == "update_display_data"]
    assert [u["data"]["text/plain"] for u in updates] == ["tick 1", "tick 2", "tick 3"]
    assert {u["transient"]["display_id"] for u in updates} == {display_id}


def test_progress_bar_is_one_display_that_moves(kernel):
    content, outputs = kernel.execute(
        "let bar_task = tokio::spawn(async {\n"
        "    let mut bar = rustloop::ProgressBar::new(100);\n"
        "    for _ in 0..100 {\n"
        "        tokio::time::sleep(std::time::Duration::from_millis(5)).await;\n"
        "        bar.inc(1);\n"
        "    }\n"
        "});\n"
        "bar_task.await.unwrap();"
    )
    assert content["status"] == "ok"
    displays = [c for t, c in outputs if t == "display_data"]
    updates = [c for t, c in outputs if t == "update_display_data"]
    assert len(displays) == 1
    assert 1 <= len(updates) < 100
    assert updates[-1]["data"]["text/plain"].endswith("100/100 (100%)")
    assert {u["transient"]["display_id"] for u in updates} == {
        displays[0]["transient"]["display_id"]
    }
