//! Which cell a task's output belongs to.
//!
//! Output follows the cell that spawned the task (tasks spawned by tasks inherit it), like
//! output of an asyncio task in ipykernel. Display frames carry the run they come from. Text a
//! task prints with `print!`/`eprint!` while another cell is running, or after a later cell
//! ran, is captured for the duration of the poll (std's per-thread output capture, the
//! mechanism `cargo test` uses) and sent as a frame tagged with the task's run. Text written
//! to `std::io::stdout()` directly, and anything printed by plain threads, goes to whatever
//! cell is running (else the most recent one).
//!
//! The capture needs std's unstable `internal_output_capture`; rustloop's rustc wrapper builds
//! this crate with it (`--cfg rustloop_capture`). Built any other way, task text is not
//! captured and follows the running cell.

use crate::json;

/// The run a display or clear belongs to: the spawning run inside a task, the current run on
/// the evaluation thread, nothing on other threads.
pub(crate) fn origin() -> Option<u64> {
    crate::tasks::origin_of_current().or_else(|| crate::on_main_thread().then(crate::current_run))
}

/// `"run"` field for a frame, when the origin is known.
pub(crate) fn field() -> Option<(&'static str, String)> {
    origin().map(|run| ("run", run.to_string()))
}

#[cfg(rustloop_capture)]
mod capture {
    use std::cell::{Cell, RefCell};
    use std::sync::{Arc, Mutex};

    thread_local! {
        /// The run whose task is being polled on this thread with its text captured.
        static CAPTURING: Cell<Option<u64>> = const { Cell::new(None) };
        static BUFFER: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
    }

    /// Before a poll of a task spawned by `run`: capture its text unless `run` is the cell
    /// running now (whose text is in the right place already).
    pub(crate) fn begin(run: u64) {
        if run == crate::current_run() {
            return;
        }
        let buffer = BUFFER.with(|b| b.borrow_mut().get_or_insert_with(Default::default).clone());
        std::io::set_output_capture(Some(buffer));
        CAPTURING.set(Some(run));
    }

    /// After the poll: sends what was captured, tagged with its run.
    pub(crate) fn end() {
        let Some(run) = CAPTURING.take() else {
            return;
        };
        std::io::set_output_capture(None);
        let bytes = BUFFER.with(|b| {
            b.borrow()
                .as_ref()
                .map(|buffer| {
                    std::mem::take(&mut *buffer.lock().unwrap_or_else(|e| e.into_inner()))
                })
                .unwrap_or_default()
        });
        if !bytes.is_empty() {
            super::send_text(run, &bytes);
        }
    }
}

#[cfg(not(rustloop_capture))]
mod capture {
    pub(crate) fn begin(_run: u64) {}
    pub(crate) fn end() {}
}

pub(crate) use capture::{begin, end};

#[cfg_attr(not(rustloop_capture), allow(dead_code))]
fn send_text(run: u64, bytes: &[u8]) {
    crate::link::send(&json::object([
        ("t", json::string("stream")),
        ("run", run.to_string()),
        ("text", json::string(&String::from_utf8_lossy(bytes))),
    ]));
}
