"""Output of a task belongs to the cell that spawned it (issue 11, finding 4).

A task spawned in cell A that prints or displays while cell B compiles, while B runs, or after
B finished, shows under A, as an asyncio task's output does under ipykernel. Tasks spawned by
tasks inherit the cell. Output of the running cell itself stays where it is.
"""

from conftest import CELL_TIMEOUT


def _run_and_listen(k, codes, settle):
    """Runs `codes` one after another (each waits for its reply), then keeps listening for
    `settle` seconds. Returns (msg_ids, every iopub message seen)."""
    kc = k.kc
    ids, seen = [], []
    for code in codes:
        msg_id = kc.execute(code)
        ids.append(msg_id)
        while True:
            m = kc.get_iopub_msg(timeout=CELL_TIMEOUT)
            seen.append(m)
            if (
                m["parent_header"].get("msg_id") == msg_id
                and m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
            ):
                break
        reply = kc.get_shell_msg(timeout=CELL_TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
    seen += k.drain_iopub(settle)
    return ids, seen


def _texts(seen, needle):
    return [
        (m["parent_header"].get("msg_id"), m["content"]["name"], m["content"]["text"])
        for m in seen
        if m["msg_type"] == "stream" and needle in m["content"]["text"]
    ]


def test_task_output_stays_under_the_cell_that_spawned_it(kernel):
    k = kernel
    k.execute("1")  # the first cell of a session may compile for a while
    cell_a = """
let ticker = tokio::spawn(async {
    for i in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        println!("A tick {i}");
    }
    tokio::spawn(async { println!("child of A"); }).await.unwrap();
    rustloop::display(&rustloop::Html::new("<b>shown by A's task</b>"));
});
"""
    # B compiles (a new fn and a statement) and waits while A's task prints; C is quick.
    cell_b = """
fn b_helper(x: u64) -> u64 { x * 3 }
tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
println!("B itself {}", b_helper(1));
"""
    cell_c = "let c_value = 7;"
    (a, b, c), seen = _run_and_listen(k, [cell_a, cell_b, cell_c], settle=4.0)

    ticks = _texts(seen, "A tick")
    assert len(ticks) >= 1 and "A tick 24" in "".join(t for _, _, t in ticks), ticks
    misplaced = [t for t in ticks if t[0] != a]
    assert not misplaced, f"A's task printed under another cell: {misplaced}"
    assert all(name == "stdout" for _, name, _ in ticks), ticks

    child = _texts(seen, "child of A")
    assert child and all(p == a for p, _, _ in child), child

    displays = [
        m for m in seen
        if m["msg_type"] == "display_data" and "shown by A" in str(m["content"]["data"])
    ]
    assert len(displays) == 1, displays
    assert displays[0]["parent_header"]["msg_id"] == a

    own = _texts(seen, "B itself 3")
    assert own and own[0][0] == b, own


def test_running_cells_own_tasks_keep_stdout_and_stderr(kernel):
    k = kernel
    code = """
tokio::spawn(async {
    println!("own task out");
    eprintln!("own task err");
}).await.unwrap();
tokio::time::sleep(std::time::Duration::from_millis(200)).await;
"""
    (a,), seen = _run_and_listen(k, [code], settle=0.5)
    out = _texts(seen, "own task out")
    err = _texts(seen, "own task err")
    assert out == [(a, "stdout", out[0][2])], out
    assert err and err[0][:2] == (a, "stderr"), err
