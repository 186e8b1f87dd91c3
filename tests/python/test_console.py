"""`jupyter console` on rustloop: a real terminal session driven with pexpect. (The console's
`--simple-prompt` mode, the one pexpect can drive, reads one line per cell; line continuation
through is_complete is covered by the protocol tests.)"""

import os
import sys

import pexpect
import pytest


@pytest.mark.timeout(900)
def test_console_session():
    jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
    child = pexpect.spawn(
        jupyter,
        ["console", "--kernel", "rustloop", "--simple-prompt"],
        env=dict(os.environ, TERM="dumb"),
        encoding="utf-8",
        timeout=120,
    )
    child.logfile_read = sys.stdout  # shown by pytest when the test fails
    try:
        child.expect(r"In \[1\]: ", timeout=600)  # a cold cache compiles tokio first
        child.sendline("tokio::time::sleep(std::time::Duration::from_millis(50)).await; 40 + 2")
        child.expect(r"Out\[1\]: 42", timeout=600)
        child.expect(r"In \[2\]: ")
        child.sendline("fn twice(x: u32) -> u32 { x * 2 }")
        child.expect(r"In \[3\]: ", timeout=120)
        child.sendline("twice(21)")
        child.expect(r"Out\[3\]: 42", timeout=120)
        child.expect(r"In \[4\]: ", timeout=120)
        child.sendline('println!("printed {}", twice(2));')
        child.expect(r"printed 4", timeout=120)
        child.expect(r"In \[5\]: ", timeout=120)
        child.sendline("exit")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
