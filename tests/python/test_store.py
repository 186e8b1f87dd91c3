"""The variable store (issue "state model"): any top-level `let` runs, futures, closures and
iterators are kept for later cells, borrows end with their cell in one quiet line, `:dep` and
unrelated redefinitions lose nothing, and a redefined type never lets a value be misread.

Every example is the one a new user tried, in a kernel of this module (cells share state, as in
a notebook)."""

import time

import pytest

from conftest import FIRST_CELL_TIMEOUT, Kernel, result_of, stderr_of, stdout_of
from conftest import ok, value


@pytest.fixture(scope="module")
def k(kernel):
    ok(kernel, "let store_warm = 1u8;", timeout=FIRST_CELL_TIMEOUT)
    return kernel


def error_of(k, code):
    content, outputs = k.execute(code)
    assert content["status"] == "error", f"expected an error from:\n{code}\n{outputs}"
    return content, outputs


def test_future_from_async_fn_kept_and_awaited_later(k):
    # the seed notebook's "coroutine never awaited" cell, written the natural way
    outputs = ok(k, "async fn nested() -> u32 { 42 }\nlet coro = nested();")
    assert "cannot be persisted" not in stdout_of(outputs) + stderr_of(outputs)
    assert value(k, "coro.await") == "42"
    # awaiting consumed it, like a Python coroutine object
    content, _ = error_of(k, "coro.await")
    assert "coro" in content["evalue"]


def test_future_in_one_cell_awaited_in_the_same_cell(k):
    assert value(k, "async fn nested2() -> u32 { 42 }\nlet f = nested2();\nf.await") == "42"
    assert value(
        k, "let g = async { 5 };\nlet h = tokio::spawn(g);\nh.await.unwrap()"
    ) == "5"


def test_async_block_kept_and_spawned_later(k):
    ok(k, "let later = async { 6 * 7 };")
    assert value(k, "tokio::spawn(later).await.unwrap()") == "42"


def test_closure_kept_and_called_later(k):
    assert value(k, "let add = |a: i32, b: i32| a + b;\nadd(2, 3)") == "5"
    assert value(k, "add(40, 2)") == "42"
    ok(k, "let mut total = 0;\nlet mut bump = move |n: i32| { total += n; total };")
    assert value(k, "bump(2)") == "2"
    assert value(k, "bump(3)") == "5"


def test_iterator_kept_and_consumed_later(k):
    ok(k, "let v = vec![1, 2, 3];\nlet doubled = v.clone().into_iter().map(|x| x * 2);")
    assert value(k, "doubled.collect::<Vec<_>>()") == "[2, 4, 6]"
    # a plain iterator keeps its own type
    ok(k, "let r = 0..4;")
    assert value(k, "r.start + r.end") == "4"


def test_borrows_end_with_their_cell_in_one_quiet_line(k):
    content, outputs = k.execute('let s = String::from("hi");\nlet r = &s;\nr.len()')
    assert content["status"] == "ok", (content, outputs)
    assert result_of(outputs) == "2"
    assert "not kept after this cell: r (borrows s)" in stdout_of(outputs), outputs
    assert "error" not in stderr_of(outputs).lower()
    assert value(k, "s.clone()") == '"hi"'
    # the iterator over a borrow of a kept vector ends with its cell too
    content, outputs = k.execute("let it = v.iter().map(|x| x * 2);\nit.clone().sum::<i32>()")
    assert content["status"] == "ok", (content, outputs)
    assert result_of(outputs) == "12"
    assert "not kept after this cell: it" in stdout_of(outputs)


def test_any_variable_name_works(k):
    # names the generated code uses for itself must not capture the user's
    ok(k, "let b = 2u8;\nlet __rustloop_run = 3u8;")
    assert value(k, "b + __rustloop_run") == "5"


def test_type_named_with_a_trait_out_of_scope(k):
    ok(k, "let outcome = std::panic::catch_unwind(|| 1);")
    assert value(k, "outcome.is_ok()") == "true"


def test_values_of_user_types_survive_dep(k):
    ok(k, "#[derive(Debug)]\nstruct Point { x: i32 }\nlet p = Point { x: 3 };")
    ok(k, ':dep itoa = "1"')
    assert value(k, "p.x") == "3"
    assert value(k, "itoa::Buffer::new().format(7u8).to_owned()") == '"7"'


def test_redefinition_never_misreads_and_names_what_was_dropped(k):
    ok(k, "#[derive(Debug)]\nstruct Cfg { a: u64 }\nlet cfg = Cfg { a: 5 };\nlet n = 3u64;")
    ok(k, "#[derive(Debug)]\nstruct Cfg { a: String }")
    content, outputs = error_of(k, "cfg.a.len()")
    assert "cfg" in content["evalue"], content
    assert "redefined" in content["evalue"], content
    assert value(k, "n + 1") == "4"


def test_panic_keeps_earlier_variables_the_cell_used(k):
    ok(k, "let mut kept_vec = vec![1];")
    content, _ = error_of(k, 'kept_vec.push(2);\nlet lost = 1;\npanic!("boom");')
    assert content["ename"] == "panic"
    assert value(k, "kept_vec.len()") == "2"


def test_a_value_gone_from_the_store_is_reported_and_nothing_else_is_taken(k):
    # The loads of a cell run outside its catch_unwind: they are checked first, so a variable
    # missing from the evaluation process's store (here removed behind the kernel's back)
    # is a panic of this cell, not a dead process, and the other variable survives.
    ok(k, "let gone_a = 1u8;\nlet gone_b = vec![7u8];")
    ok(k, 'rustloop::__store::forget(&["gone_a"]);')
    content, outputs = error_of(k, "gone_b.push(gone_a);")
    assert content["ename"] == "panic", (content, outputs)
    assert "`gone_a` is no longer kept" in content["evalue"], content
    assert value(k, "gone_b.len()") == "1"
    content, _ = error_of(k, "gone_a")
    assert "gone_a" in content["evalue"], content


def test_vars_after_a_dep_line_in_the_same_cell(k):
    # `:vars` after a `:dep` once panicked the evaluator (an offset past the cell's code).
    ok(k, "let before_dep = 3u8;")
    out = stdout_of(ok(k, ':dep itoa = "1"\n:vars'))
    assert any(l.startswith("before_dep ") for l in out.splitlines()), out
    assert value(k, "before_dep + 1") == "4"


def test_question_mark_at_top_level(k):
    assert value(k, 'let parsed: u8 = "7".parse()?;\nparsed + 1') == "8"
    content, outputs = error_of(k, 'let bad: u8 = "x".parse()?;')
    assert "invalid digit" in stderr_of(outputs), outputs


def test_vars_lists_types_cells_and_whether_kept(k):
    ok(k, "let listed = vec![1u8];")
    out = stdout_of(ok(k, ":vars"))
    line = next((l for l in out.splitlines() if l.startswith("listed ")), None)
    assert line is not None, out
    assert "std::vec::Vec<u8>" in line and "yes" in line, line
    assert any(l.startswith("r ") and " no " in l and "borrows s" in l for l in out.splitlines()), out
    add = next(l for l in out.splitlines() if l.startswith("add "))
    assert "FnMut(i32, i32) -> i32" in add and "(boxed)" in add, add


def test_first_let_cell_of_a_session_does_not_wait_for_the_analysis(k):
    """A new kernel on a machine where rustloop ran (this module's kernel warmed the cache):
    the first cell, a `let`, runs on the fast lane."""
    t0 = time.monotonic()
    fresh = Kernel()
    try:
        content, outputs = fresh.execute("let x = 1;", timeout=FIRST_CELL_TIMEOUT)
        first = time.monotonic() - t0
        assert content["status"] == "ok", (content, outputs)
        assert value(fresh, "x + 1") == "2"
        print(f"\nkernel start to end of first `let` cell: {first:.2f}s")
    finally:
        fresh.shutdown()
