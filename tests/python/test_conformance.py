"""The Jupyter project's conformance suite (jupyter_kernel_test) run against rustloop.

Every sample attribute jupyter_kernel_test 0.7 knows is filled in. The package's own
`TIMEOUT` (15 s) is shorter than a cold first cell can take, so `setUpClass` runs a
warm-up cell with the long first-cell timeout, and waits for rust-analyzer (which loads on
the first completion), before any sample test runs.
"""

import time
import unittest

import jupyter_kernel_test

from conftest import FIRST_CELL_TIMEOUT, KERNEL_NAME


def _warm_up(kc):
    """Runs one cell (which starts the evaluator and compiles the runtime) and drains iopub."""
    msg_id = kc.execute("tokio::time::sleep(std::time::Duration::from_millis(1)).await;")
    while True:
        reply = kc.get_shell_msg(timeout=FIRST_CELL_TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "ok", reply["content"]
    while True:
        msg = kc.get_iopub_msg(timeout=FIRST_CELL_TIMEOUT)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    # rust-analyzer loads on the first request and answers within 0.18 s once it has seen
    # a path; until then replies come from what the kernel knows. The samples below check
    # rust-analyzer's answers, so each is asked until it has answered once.
    def until(request, answered):
        deadline = time.monotonic() + FIRST_CELL_TIMEOUT
        while time.monotonic() < deadline:
            msg_id = request()
            while True:
                reply = kc.get_shell_msg(timeout=FIRST_CELL_TIMEOUT)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if answered(reply["content"]):
                return
            time.sleep(0.5)

    for sample in RustloopKernelTests.completion_samples:
        until(
            lambda text=sample["text"]: kc.complete(text),
            lambda c: c["metadata"].get("rustloop_source") == "rust-analyzer",
        )
    for code in ("std::vec::Vec", "String::new"):
        until(lambda code=code: kc.inspect(code), lambda c: c["found"])


class RustloopKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "rust"
    file_extension = ".rs"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _warm_up(cls.kc)

    code_hello_world = 'println!("hello, world");'

    code_stderr = 'eprintln!("to stderr");'

    # Matches are the names rust-analyzer (through evcxr) proposes, without argument snippets
    # (like ipykernel), replacing the partial word under the cursor.
    completion_samples = [
        {"text": "std::vec::Vec::with_capa", "matches": {"with_capacity"}},
        {"text": "let s = String::with_capa", "matches": {"with_capacity"}},
        {"text": "tokio::time::sleep_unt", "matches": {"sleep_until"}},
        # Only a reply (no fixed match set): a method on a local variable's inferred type.
        {"text": "let n = 5u32;\nn.checked_ad"},
    ]

    complete_code_samples = [
        "1",
        "let x = 1;",
        "fn f() {}",
        "struct P { x: i32 }",
        'println!("{}", 1)',
        "tokio::time::sleep(std::time::Duration::from_millis(1)).await;",
        "",
    ]
    incomplete_code_samples = [
        "fn f() {",
        "let v = vec![1,",
        "if true {",
        'let s = "abc',
        "struct P {\n    x: i32,",
    ]
    invalid_code_samples = [
        "let x = 1;)",
        "fn f() }",
        "let v = [1, 2);",
    ]

    code_generate_error = 'panic!("boom")'

    code_execute_result = [
        {"code": "1 + 1", "result": "2"},
        {"code": 'String::from("hi")', "result": '"hi"'},
        {"code": "vec![1, 2, 3]", "result": "[1, 2, 3]"},
        {"code": "Some(3u8)", "result": "Some(3)"},
        {
            "code": "tokio::time::sleep(std::time::Duration::from_millis(5)).await;\n6 * 7",
            "result": "42",
        },
        {
            "code": 'rustloop::Html::new("<i>rich</i>".to_string())',
            "mime": "text/html",
            "result": "<i>rich</i>",
        },
    ]

    # A glob that matches exactly one distinct sample above (the unique search expects 1).
    code_history_pattern = "vec!*"
    supported_history_operations = ("tail", "range", "search")

    code_display_data = [
        {
            "code": 'rustloop::display(&rustloop::Html::new("<b>x</b>".to_string()));',
            "mime": "text/html",
        },
        {
            "code": (
                "rustloop::display(&rustloop::Svg::new(r#\"<svg xmlns='http://www.w3.org/2000/svg'"
                " width='10' height='10'><rect width='10' height='10'/></svg>\"#.to_string()));"
            ),
            "mime": "image/svg+xml",
        },
        {
            "code": 'rustloop::display(&rustloop::Markdown::new("# title".to_string()));',
            "mime": "text/markdown",
        },
    ]

    code_inspect_sample = "String::new"

    code_clear_output = 'println!("soon gone");\nrustloop::clear_output(false);'

    def test_inspect_type_path(self):
        """inspect on a type path (`std::vec::Vec`) finds its documentation too."""
        self.flush_channels()
        msg_id = self.kc.inspect("std::vec::Vec")
        reply = self.get_non_kernel_info_reply(timeout=jupyter_kernel_test.TIMEOUT)
        jupyter_kernel_test.validate_message(reply, "inspect_reply", msg_id)
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertTrue(reply["content"]["found"])
        self.assertIn("Vec", reply["content"]["data"]["text/plain"])

    def test_kernel_info_details(self):
        """implementation name, protocol version and Rust syntax highlighting hints."""
        self.flush_channels()
        msg_id = self.kc.kernel_info()
        reply = self.kc.get_shell_msg(timeout=jupyter_kernel_test.TIMEOUT)
        jupyter_kernel_test.validate_message(reply, "kernel_info_reply", msg_id)
        content = reply["content"]
        self.assertEqual(content["implementation"], "rustloop")
        self.assertTrue(content["protocol_version"].startswith("5."))
        self.assertEqual(content["language_info"]["name"], "rust")
        self.assertIn("help_links", content)


class RustloopIopubWelcomeTests(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = KERNEL_NAME
    support_iopub_welcome = True


if __name__ == "__main__":
    unittest.main()
