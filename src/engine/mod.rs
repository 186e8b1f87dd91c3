//! The evaluation engine: Rust cells in, outputs and outcomes out.
//!
//! The kernel layer talks to it through [`Engine`] (execute, complete, inspect, interrupt,
//! input replies) and receives an ordered stream of [`Event`]s. Inside:
//! - [`cell`] rewrites cells (top-level `.await`, final-value display) and answers
//!   `is_complete` from the parser alone;
//! - `evaluator` owns evcxr's `CommandContext` on its own thread, warms it up in the
//!   background, and turns evcxr's results into outcomes;
//! - `child` is the evaluation process evcxr starts (the same binary);
//! - `link` is the socket between the two; `cache` the persistent build directory,
//!   `shared_cache` the installation's read-only one that seeds it;
//! - [`comms`] keeps the open comms and carries comm messages both ways;
//! - `wrapper` compiles cells (as cargo's rustc wrapper, or directly when only the cell's
//!   source changed); `errors` renders compile errors and crashes; `warnings` keeps the
//!   compiler warnings worth showing.

mod analysis;
pub mod cache;
pub mod cell;
mod child;
pub mod comms;
mod errors;
mod evaluator;
mod fast_lane;
mod first_build;
mod link;
mod outcome;
mod router;
mod run;
pub mod shared_cache;
mod store;
mod warm_up;
mod warnings;
mod wrapper;

pub use child::run_if_evaluation_process;
pub use errors::ErrorInfo;
pub use wrapper::run_if_rustc_wrapper;

use serde_json::{Map, Value};
use std::sync::Arc;

/// Identifies one execute request; chosen by the caller.
pub type ExecId = u64;

/// Where an output should appear.
#[derive(Debug, Clone)]
pub enum Output {
    Stream {
        stderr: bool,
        text: String,
    },
    Display {
        data: Map<String, Value>,
        metadata: Map<String, Value>,
        display_id: Option<String>,
    },
    Update {
        data: Map<String, Value>,
        metadata: Map<String, Value>,
        display_id: String,
    },
    Clear {
        wait: bool,
    },
    /// The cell's value (`execute_result`).
    Result {
        data: Map<String, Value>,
        metadata: Map<String, Value>,
    },
    /// The running cell asks the user for input; answer with [`Engine::input_reply`].
    InputRequest {
        prompt: String,
        password: bool,
    },
    /// A comm message (`comm_open`, `comm_msg`, `comm_close`) from the evaluation process.
    Comm {
        msg_type: String,
        /// `comm_id`, `data`, and `target_name` for `comm_open`.
        content: Value,
        /// The message's metadata (a widget's `comm_open` names the protocol version in it).
        metadata: Value,
        buffers: Vec<Vec<u8>>,
        /// The token of the front end's comm message being handled when this was sent.
        reply_to: Option<u64>,
    },
}

/// How an execution ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub error: Option<ErrorInfo>,
    /// `user_expressions` results, already in Jupyter's shape.
    pub user_expressions: Map<String, Value>,
}

/// Everything the engine reports, in order: all outputs of a cell come before its `Finished`.
#[derive(Debug, Clone)]
pub enum Event {
    Output(Output),
    /// Output that belongs to an earlier cell than the running one: what a task spawned by
    /// `origin` printed or displayed later.
    Late {
        origin: ExecId,
        output: Output,
    },
    Finished {
        id: ExecId,
        outcome: Outcome,
    },
}

/// Receives events; called from engine threads and tasks, must not block.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// An execute request.
#[derive(Debug, Clone)]
pub struct Execute {
    pub id: ExecId,
    pub code: String,
    /// Shown in messages about this cell, e.g. `[3]`.
    pub label: String,
    pub allow_stdin: bool,
    pub user_expressions: Vec<(String, String)>,
}

/// Completion matches for a cursor position (character offsets).
#[derive(Debug, Clone, Default)]
pub struct Completions {
    pub matches: Vec<String>,
    pub cursor_start: usize,
    pub cursor_end: usize,
    /// Whether rust-analyzer answered (else the kernel answered from what it knows).
    pub from_analysis: bool,
}

/// `(text/plain, text/html)` documentation for the item at a cursor.
pub type Inspection = Option<(String, String)>;

pub use evaluator::Engine;

/// Warms a cache slot without a Jupyter client: compiles tokio and the runtime crate, which the
/// first notebook session would otherwise do (`rustloop install` runs this).
pub async fn prebuild(slot: cache::Slot) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::start(
        Arc::new(move |event| {
            let _ = tx.send(event);
        }),
        slot,
    )?;
    engine.execute(Execute {
        id: 1,
        code: "let _ = rustloop::handle();".to_owned(),
        label: "[install]".to_owned(),
        allow_stdin: false,
        user_expressions: Vec::new(),
    });
    while let Some(event) = rx.recv().await {
        match event {
            Event::Output(Output::Stream { text, .. }) => eprint!("{text}"),
            Event::Output(_) | Event::Late { .. } => {}
            Event::Finished { outcome, .. } => {
                if outcome.error.is_none() {
                    learn_paths(&engine).await;
                }
                engine.shutdown();
                return match outcome.error {
                    None => Ok(()),
                    Some(e) => Err(anyhow::anyhow!("{}: {}", e.ename, e.evalue)),
                };
            }
        }
    }
    anyhow::bail!("the evaluator stopped before the cache was built")
}

/// Asks rust-analyzer once, at install, what the paths notebooks use most offer, so that
/// completion knows them from a first session's first second on (the answers are kept in the
/// slot, `analysis/fallback.rs`; a session loads rust-analyzer only on its first completion).
/// Best effort: an answer that does not come within a minute is skipped.
async fn learn_paths(engine: &Engine) {
    let started = std::time::Instant::now();
    let mut learned = 0;
    for path in analysis::INSTALL_PATHS {
        let code = format!("{path}::");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // The first request loads rust-analyzer, seconds during which the fallback answers.
        loop {
            let cursor = code.chars().count();
            if engine.complete(code.clone(), cursor).await.from_analysis {
                learned += 1;
                break;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!("install: no completion for `{code}` from rust-analyzer");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    tracing::info!(
        "install: completions of {learned} paths learned in {:.1?}",
        started.elapsed()
    );
}
