//! The kernel: Jupyter requests in, replies and iopub messages out.
//!
//! - [`Kernel::run`] binds the sockets, starts the engine and serves three queues: shell
//!   (strictly in order, like ipykernel), control (interrupt, shutdown, kernel_info; served
//!   while a cell runs) and stdin (input replies).
//! - [`comms`] serves comm messages from the front end beside the shell queue (at once, even
//!   while a cell runs).
//! - [`publisher`] owns iopub output attribution and stream batching.
//! - [`history`] keeps this session's inputs for `history_request`.
//!
//! It knows nothing about evcxr: it sees the engine only through `crate::engine::Engine`.

mod comms;
mod history;
pub mod publisher;

use crate::engine::{self, Engine, Event, Execute, Outcome, cell};
use crate::wire::connection::Channel;
use crate::wire::sockets::Sender;
use crate::wire::{ConnectionFile, Incoming, Outgoing, Sockets};
use anyhow::Result;
use history::History;
use publisher::{CellContext, Message, Publisher};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const IMPLEMENTATION: &str = "rustloop";

/// A running kernel.
struct Kernel {
    sender: Sender,
    shell: mpsc::Receiver<Incoming>,
    /// Shell requests taken off the socket but not handled yet.
    queue: VecDeque<Incoming>,
    engine: Engine,
    publisher: mpsc::UnboundedSender<Message>,
    execution_count: u64,
    next_exec_id: u64,
    history: History,
}

/// Binds the sockets from `connection`, then serves requests until shutdown.
pub async fn run(connection: ConnectionFile, slot: engine::cache::Slot) -> Result<()> {
    let session = uuid::Uuid::new_v4().to_string();
    let sockets = Sockets::bind(&connection, session).await?;
    let Sockets {
        shell,
        control,
        stdin,
        sender,
    } = sockets;

    let (publisher_tx, publisher_rx) = mpsc::unbounded_channel();
    let events = publisher_tx.clone();
    let engine = Engine::start(
        Arc::new(move |event: Event| {
            let _ = events.send(Message::Engine(event));
        }),
        slot,
    )?;
    let comm_parents = Arc::new(comms::CommParents::default());
    tokio::spawn(Publisher::new(sender.clone(), comm_parents.clone()).run(publisher_rx));
    let shell = comms::split_shell(shell, sender.clone(), engine.clone(), comm_parents);
    publish_status_raw(&sender, None, "starting");

    tokio::spawn(serve_stdin(stdin, engine.clone()));
    tokio::spawn(interrupt_on_sigint(engine.clone()));
    let control_task = tokio::spawn(serve_control(control, sender.clone(), engine.clone()));

    let mut kernel = Kernel {
        sender,
        shell,
        queue: VecDeque::new(),
        engine,
        publisher: publisher_tx,
        execution_count: 0,
        next_exec_id: 1,
        history: History::default(),
    };
    tokio::select! {
        _ = kernel.serve_shell() => {}
        _ = control_task => {}
    }
    Ok(())
}

fn publish_status_raw(sender: &Sender, parent: Option<&Incoming>, state: &str) {
    let content = json!({ "execution_state": state });
    let message = match parent {
        Some(parent) => Outgoing::child_of(parent, "status", content),
        None => Outgoing::new("status", content),
    };
    sender.publish(message);
}

/// Reply content for requests rustloop does not implement, in the shape clients expect.
fn unknown_request_reply(request: &Incoming) -> Option<(String, Value)> {
    let msg_type = request.msg_type();
    let base = msg_type.strip_suffix("_request")?;
    Some((
        format!("{base}_reply"),
        json!({
            "status": "error",
            "ename": "UnknownMessageType",
            "evalue": format!("rustloop does not handle {msg_type}"),
            "traceback": [],
        }),
    ))
}

pub fn kernel_info() -> Value {
    json!({
        "status": "ok",
        "protocol_version": crate::wire::message::PROTOCOL_VERSION,
        "implementation": IMPLEMENTATION,
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "rust",
            "version": crate::toolchain_version(),
            "mimetype": "text/rust",
            "file_extension": ".rs",
            "pygments_lexer": "rust",
            "codemirror_mode": "rust",
        },
        "banner": format!(
            "rustloop {} - async Rust in Jupyter: cells run on an always-running tokio runtime, \
             so `.await` works at the top of any cell.",
            env!("CARGO_PKG_VERSION")
        ),
        "help_links": [
            {"text": "rustloop", "url": "https://github.com/rustloop/rustloop#readme"},
            {"text": "Rust standard library", "url": "https://doc.rust-lang.org/std/"},
            {"text": "tokio", "url": "https://docs.rs/tokio/latest/tokio/"},
        ],
        "debugger": false,
        // JEP 92: the optional features (the debugger, kernel subshells); rustloop has none of
        // them. Comms are part of the core protocol and need no entry.
        "supported_features": [],
    })
}

impl Kernel {
    fn status(&self, parent: &Incoming, state: &str) {
        publish_status_raw(&self.sender, Some(parent), state);
    }

    async fn reply(&self, request: &Incoming, msg_type: &str, content: Value) {
        self.sender
            .reply(
                Channel::Shell,
                Outgoing::child_of(request, msg_type, content),
            )
            .await;
    }

    async fn serve_shell(&mut self) {
        loop {
            let request = match self.queue.pop_front() {
                Some(request) => request,
                None => match self.shell.recv().await {
                    Some(request) => request,
                    None => return,
                },
            };
            self.status(&request, "busy");
            let failed_with_stop = self.handle_shell(&request).await;
            self.status(&request, "idle");
            if failed_with_stop {
                self.abort_queued().await;
            }
        }
    }

    /// Moves requests that already arrived into the queue (called when a cell fails, before
    /// its reply, so that exactly the requests sent before the client saw the error are
    /// aborted).
    fn take_arrived(&mut self) {
        while let Ok(request) = self.shell.try_recv() {
            self.queue.push_back(request);
        }
    }

    /// After an error with `stop_on_error`, every queued execute request is answered
    /// `aborted`; other requests keep their place. Like ipykernel, the reply carries no
    /// `execution_count` (and no `execute_input` is published): the cell did not run, so
    /// JupyterLab leaves its prompt `[ ]` and saves a null count instead of the failed cell's.
    async fn abort_queued(&mut self) {
        let mut kept = VecDeque::new();
        let queued: Vec<Incoming> = self.queue.drain(..).collect();
        for request in queued {
            if request.msg_type() == "execute_request" {
                self.status(&request, "busy");
                self.reply(&request, "execute_reply", json!({ "status": "aborted" }))
                    .await;
                self.status(&request, "idle");
            } else {
                kept.push_back(request);
            }
        }
        self.queue = kept;
    }

    /// Handles one shell request; returns true if it was an execute that failed with
    /// `stop_on_error`.
    async fn handle_shell(&mut self, request: &Incoming) -> bool {
        let content = &request.content;
        match request.msg_type() {
            "kernel_info_request" => {
                self.reply(request, "kernel_info_reply", kernel_info())
                    .await
            }
            "execute_request" => return self.execute(request).await,
            "is_complete_request" => {
                let code = content["code"].as_str().unwrap_or("");
                let reply = match cell::is_complete(code) {
                    cell::Completeness::Complete => json!({"status": "complete"}),
                    cell::Completeness::Incomplete(indent) => {
                        json!({"status": "incomplete", "indent": indent})
                    }
                    cell::Completeness::Invalid => json!({"status": "invalid"}),
                };
                self.reply(request, "is_complete_reply", reply).await;
            }
            "complete_request" => {
                let code = content["code"].as_str().unwrap_or("").to_owned();
                let cursor = content["cursor_pos"]
                    .as_u64()
                    .map_or(code.chars().count(), |c| c as usize);
                let result = self.engine.complete(code, cursor).await;
                self.reply(
                    request,
                    "complete_reply",
                    json!({
                        "status": "ok",
                        "matches": result.matches,
                        "cursor_start": result.cursor_start,
                        "cursor_end": result.cursor_end,
                        "metadata": {
                            "rustloop_source": if result.from_analysis { "rust-analyzer" } else { "known" },
                        },
                    }),
                )
                .await;
            }
            "inspect_request" => {
                let code = content["code"].as_str().unwrap_or("").to_owned();
                let cursor = content["cursor_pos"]
                    .as_u64()
                    .map_or(code.chars().count(), |c| c as usize);
                let reply = match self.engine.inspect(code, cursor).await {
                    Some((plain, html)) => json!({
                        "status": "ok",
                        "found": true,
                        "data": {"text/plain": plain, "text/html": html},
                        "metadata": {},
                    }),
                    None => json!({"status": "ok", "found": false, "data": {}, "metadata": {}}),
                };
                self.reply(request, "inspect_reply", reply).await;
            }
            "history_request" => {
                let reply = self.history.reply(content);
                self.reply(request, "history_reply", reply).await;
            }
            "shutdown_request" => {
                // Deprecated on shell, still honoured.
                shutdown(&self.sender, &self.engine, request, Channel::Shell).await;
            }
            other => {
                tracing::warn!("unhandled shell message {other}");
                if let Some((msg_type, reply)) = unknown_request_reply(request) {
                    self.reply(request, &msg_type, reply).await;
                }
            }
        }
        false
    }

    async fn execute(&mut self, request: &Incoming) -> bool {
        let content = &request.content;
        let Some(code) = content["code"].as_str() else {
            self.reply(
                request,
                "execute_reply",
                json!({
                    "status": "error",
                    "execution_count": self.execution_count,
                    "ename": "BadRequest",
                    "evalue": "execute_request without a string \"code\"",
                    "traceback": [],
                }),
            )
            .await;
            return false;
        };
        if matches!(code.trim(), "exit" | "quit" | ":quit") {
            // Ask the frontend to close (jupyter console does); evcxr's own `:quit` would end
            // the kernel process instead.
            self.reply(
                request,
                "execute_reply",
                json!({
                    "status": "ok",
                    "execution_count": self.execution_count,
                    "user_expressions": {},
                    "payload": [{"source": "ask_exit", "keepkernel": false}],
                }),
            )
            .await;
            return false;
        }
        let silent = content["silent"].as_bool().unwrap_or(false);
        let store_history = !silent && content["store_history"].as_bool().unwrap_or(true);
        let stop_on_error = content["stop_on_error"].as_bool().unwrap_or(true);
        let allow_stdin = content["allow_stdin"].as_bool().unwrap_or(false);
        let user_expressions: Vec<(String, String)> = content["user_expressions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();

        if store_history {
            self.execution_count += 1;
            self.history.record(self.execution_count, code);
        }
        let execution_count = self.execution_count;
        if !silent {
            self.sender.publish(Outgoing::child_of(
                request,
                "execute_input",
                json!({"code": code, "execution_count": execution_count}),
            ));
        }

        let id = self.next_exec_id;
        self.next_exec_id += 1;
        let (done, finished) = oneshot::channel();
        let _ = self.publisher.send(Message::Begin(CellContext {
            id,
            request: Arc::new(request.clone()),
            execution_count,
            silent,
            done,
        }));
        self.engine.execute(Execute {
            id,
            code: code.to_owned(),
            label: format!("[{execution_count}]"),
            allow_stdin,
            user_expressions,
        });
        let outcome: Outcome = finished.await.unwrap_or_default();
        let failed = outcome.error.is_some();
        if failed && stop_on_error {
            self.take_arrived();
        }
        let reply = match &outcome.error {
            None => json!({
                "status": "ok",
                "execution_count": execution_count,
                "user_expressions": outcome.user_expressions,
                "payload": [],
            }),
            Some(error) => json!({
                "status": "error",
                "execution_count": execution_count,
                "ename": error.ename,
                "evalue": error.evalue,
                "traceback": error.traceback,
                "user_expressions": {},
                "payload": [],
            }),
        };
        self.reply(request, "execute_reply", reply).await;
        failed && stop_on_error
    }
}

async fn serve_control(mut control: mpsc::Receiver<Incoming>, sender: Sender, engine: Engine) {
    while let Some(request) = control.recv().await {
        publish_status_raw(&sender, Some(&request), "busy");
        match request.msg_type() {
            "interrupt_request" => {
                engine.interrupt();
                sender
                    .reply(
                        Channel::Control,
                        Outgoing::child_of(&request, "interrupt_reply", json!({"status": "ok"})),
                    )
                    .await;
            }
            "kernel_info_request" => {
                sender
                    .reply(
                        Channel::Control,
                        Outgoing::child_of(&request, "kernel_info_reply", kernel_info()),
                    )
                    .await;
            }
            "shutdown_request" => {
                shutdown(&sender, &engine, &request, Channel::Control).await;
            }
            other => {
                tracing::warn!("unhandled control message {other}");
                if let Some((msg_type, reply)) = unknown_request_reply(&request) {
                    sender
                        .reply(
                            Channel::Control,
                            Outgoing::child_of(&request, &msg_type, reply),
                        )
                        .await;
                }
            }
        }
        publish_status_raw(&sender, Some(&request), "idle");
    }
}

async fn shutdown(sender: &Sender, engine: &Engine, request: &Incoming, channel: Channel) -> ! {
    let restart = request.content["restart"].as_bool().unwrap_or(false);
    engine.shutdown();
    sender
        .reply(
            channel,
            Outgoing::child_of(
                request,
                "shutdown_reply",
                json!({"status": "ok", "restart": restart}),
            ),
        )
        .await;
    publish_status_raw(sender, Some(request), "idle");
    // Give the sockets a moment to deliver the reply before the process ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    crate::watchdog::ending_as_asked();
    std::process::exit(0);
}

async fn serve_stdin(mut stdin: mpsc::Receiver<Incoming>, engine: Engine) {
    while let Some(message) = stdin.recv().await {
        if message.msg_type() == "input_reply" {
            let value = message.content["value"].as_str().unwrap_or("").to_owned();
            engine.input_reply(Ok(value));
        }
    }
}

/// A SIGINT to the kernel process (Jupyter's `interrupt_mode: signal`, or Ctrl-C in a
/// terminal) interrupts the running cell like an `interrupt_request`.
async fn interrupt_on_sigint(engine: Engine) {
    let Ok(mut signals) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        return;
    };
    while signals.recv().await.is_some() {
        engine.interrupt();
    }
}
