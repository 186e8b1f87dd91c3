//! What the router knows about the cell that is running ([`CellState`]), and the small types
//! the evaluator and the fast lane read from it.

use super::super::ExecId;
use serde_json::{Map, Value};
use std::time::Instant;

/// A panic on the evaluation thread, as reported by the runtime's panic hook.
#[derive(Debug, Clone)]
pub struct PanicReport {
    pub message: String,
    pub location: String,
}

/// Who is waiting for the user's input.
#[derive(Debug, Default)]
pub enum InputWaiter {
    #[default]
    None,
    /// `rustloop::input` (answered over the control connection).
    Runtime,
    /// evcxr's `evcxr_input` protocol (answered through evcxr's callback).
    Evcxr(std::sync::mpsc::Sender<Result<String, String>>),
}

/// What the evaluator needs to know about the cell that is running.
#[derive(Debug, Default)]
pub struct CellState {
    pub executing: Option<ExecId>,
    pub label: String,
    /// The cell's source, to show compiler warnings against.
    pub code: String,
    pub allow_stdin: bool,
    /// While evaluating `user_expressions`: results are captured, not shown.
    pub capture: Option<Map<String, Value>>,
    /// The evaluation-process run of the current cell (from its `cell_start`).
    pub run: Option<u64>,
    pub interrupt_requested: bool,
    pub interrupt_delivered_at: Option<Instant>,
    pub interrupted_at_await: bool,
    pub killed_for_interrupt: bool,
    pub panic: Option<PanicReport>,
    pub evcxr_panic: bool,
    pub question_mark_error: bool,
    pub crash_signal: Option<String>,
    /// The evaluation process called `exit` with this status.
    pub exit_status: Option<i64>,
    /// The evaluation process stopped because the runtime library was rebuilt.
    pub runtime_changed: bool,
    /// The evaluation process died during the cell (every kept value is gone).
    pub died: bool,
    pub input: InputWaiter,
    /// The cell runs on the fast lane (compiled by rustloop while evcxr warms up).
    pub fast_lane: bool,
    pub(in crate::engine) in_result: bool,
    pub(in crate::engine) result: Option<(Map<String, Value>, Map<String, Value>)>,
}

impl CellState {
    /// The state of `execute` as it starts.
    pub fn for_cell(execute: &super::super::Execute) -> CellState {
        CellState {
            executing: Some(execute.id),
            label: execute.label.clone(),
            code: execute.code.clone(),
            allow_stdin: execute.allow_stdin,
            ..CellState::default()
        }
    }
}

/// How a fast-lane cell ended, as seen on the link.
#[derive(Debug)]
pub enum FastEnd {
    /// It ran; `Err` if its library could not be loaded.
    Ran(Result<(), String>),
    /// The evaluation process went away.
    Died,
}
