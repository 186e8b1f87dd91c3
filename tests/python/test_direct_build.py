"""Cells built by rustc directly: once cargo has built the cell crate, later cells whose build
differs only in their source skip cargo (issue "speed floor"). Which path built a cell is read
from the kernel's log; what the user sees must not change.
"""

from conftest import result_of, stderr_of, stdout_of, wait_until_warm, log_of

DIRECT = "cell built by rustc without cargo"


def run_ok(k, code):
    content, outputs = k.execute(code)
    assert content["status"] == "ok", (content, outputs)
    return outputs


def direct_builds(k):
    return log_of(k).count(DIRECT)


def test_cells_after_the_first_build_skip_cargo_and_behave_the_same(logged):
    k = logged
    run_ok(k, "1")
    wait_until_warm(k)
    run_ok(k, "let base = 40;")
    before = direct_builds(k)
    outputs = run_ok(k, "fn plus(x: i32) -> i32 { x + base_offset() }\nfn base_offset() -> i32 { 2 }")
    outputs = run_ok(k, "plus(base)")
    assert result_of(outputs) == "42"
    outputs = run_ok(k, 'println!("{} from {}", plus(0), env!("CARGO_PKG_NAME"));')
    assert stdout_of(outputs) == "2 from ctx\n"
    assert direct_builds(k) >= before + 3, log_of(k)[-3000:]

    # a compile error is reported against the user's line, as through cargo
    content, outputs = k.execute("let y: u32 = \"text\";")
    assert content["status"] == "error"
    assert "mismatched types" in content["evalue"] + str(content["traceback"]), content

    # a warning rustloop shows still reaches the cell
    outputs = run_ok(k, "async fn later() -> u32 { 1 }\nlater();")
    assert "futures do nothing" in stderr_of(outputs), outputs


def test_dep_goes_through_cargo_and_later_cells_skip_it_again(logged):
    k = logged
    run_ok(k, "1")
    wait_until_warm(k)
    run_ok(k, "2")
    before = direct_builds(k)
    run_ok(k, ':dep itoa = "1"')
    after_dep = direct_builds(k)
    assert after_dep == before, "the :dep cell must be built by cargo"
    outputs = run_ok(k, "itoa::Buffer::new().format(1234).to_owned()")
    assert result_of(outputs) == '"1234"'
    assert direct_builds(k) == after_dep + 1, log_of(k)[-3000:]


def test_a_cell_with_an_error_is_compiled_once(logged):
    """evcxr compiles a failed cell again without its `catch_unwind`, and again with `?` allowed
    after a type error (E0277); rustloop's rewritten cells handle both themselves, so each error
    costs one build (evcxr patch 4)."""
    k = logged
    run_ok(k, "1")
    wait_until_warm(k)
    run_ok(k, "let kept = 7u32;")
    for code, expected in [
        ("let sum = kept + missing_name;", "cannot find value `missing_name`"),
        ('let sum = kept + "text";', "cannot add `&str` to `u32`"),
        ('let n: u32 = "5".parse()?;\nlet m = n + "x";', "cannot add `&str` to `u32`"),
    ]:
        before = direct_builds(k)
        content, _ = k.execute(code)
        assert content["status"] == "error", content
        assert expected in content["evalue"] + "\n".join(content["traceback"]), content
        assert direct_builds(k) == before + 1, (code, log_of(k)[-3000:])
    # `?` at the top level still works, and the kept variable is untouched
    outputs = run_ok(k, 'let n: u32 = "5".parse()?;\nn + kept')
    assert result_of(outputs) == "12"
