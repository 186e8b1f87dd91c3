//! The one place that turns engine output into iopub messages.
//!
//! It decides which request an output belongs to (the cell a task's output comes from, else
//! the running cell, else the most recent one), batches `stream` text (flushed on a short timer, on size, and before any other message), and
//! tells the shell handler when a cell's output is complete.

use crate::engine::{Event, ExecId, Outcome, Output};
use crate::wire::connection::Channel;
use crate::wire::{Incoming, Outgoing};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Stream text waits at most this long before it is sent.
pub const STREAM_FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// ...and is sent at once when this much has accumulated.
const STREAM_FLUSH_BYTES: usize = 256 * 1024;

/// A cell as the publisher sees it.
pub struct CellContext {
    pub id: ExecId,
    pub request: Arc<Incoming>,
    pub execution_count: u64,
    pub silent: bool,
    /// Receives the outcome once every output of the cell has been queued on iopub.
    pub done: oneshot::Sender<Outcome>,
}

pub enum Message {
    /// A cell starts: outputs from now on belong to it.
    Begin(CellContext),
    Engine(Event),
}

struct Pending {
    stderr: bool,
    text: String,
    parent: Arc<Incoming>,
    since: Instant,
}

/// How many finished cells late task output can still be routed to.
const RECENT_CELLS: usize = 1024;

pub struct Publisher {
    sender: crate::wire::sockets::Sender,
    current: Option<CellContext>,
    /// Where background output goes when no cell runs.
    last: Option<Arc<Incoming>>,
    /// Recent cells (request, silent), for output of tasks they spawned.
    recent: std::collections::VecDeque<(ExecId, Arc<Incoming>, bool)>,
    pending: Option<Pending>,
}

impl Publisher {
    pub fn new(sender: crate::wire::sockets::Sender) -> Self {
        Publisher {
            sender,
            current: None,
            last: None,
            recent: Default::default(),
            pending: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        loop {
            let deadline = self
                .pending
                .as_ref()
                .map(|p| p.since + STREAM_FLUSH_INTERVAL);
            tokio::select! {
                message = rx.recv() => {
                    let Some(message) = message else { return };
                    self.handle(message).await;
                }
                _ = sleep_until(deadline) => self.flush(),
            }
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Begin(cell) => {
                self.flush();
                self.last = Some(cell.request.clone());
                if self.recent.len() == RECENT_CELLS {
                    self.recent.pop_front();
                }
                self.recent
                    .push_back((cell.id, cell.request.clone(), cell.silent));
                self.current = Some(cell);
            }
            Message::Engine(Event::Output(output)) => {
                let target = self.target();
                self.output(output, target).await
            }
            Message::Engine(Event::Late { origin, output }) => {
                let target = self.target_of(origin);
                self.output(output, target).await
            }
            Message::Engine(Event::Finished { id, outcome }) => {
                self.flush();
                let Some(cell) = self.current.take_if(|c| c.id == id) else {
                    tracing::warn!(id, "finished event for a cell that is not running");
                    return;
                };
                if let Some(error) = &outcome.error
                    && !cell.silent
                {
                    self.publish(
                        &cell.request,
                        "error",
                        json!({
                            "ename": error.ename,
                            "evalue": error.evalue,
                            "traceback": error.traceback,
                        }),
                    );
                }
                let _ = cell.done.send(outcome);
            }
        }
    }

    /// The request outputs are attributed to now, and whether they are to be shown.
    fn target(&self) -> Option<(Arc<Incoming>, bool)> {
        match &self.current {
            Some(cell) => Some((cell.request.clone(), !cell.silent)),
            None => self.last.clone().map(|r| (r, true)),
        }
    }

    /// Where output of a task spawned by cell `origin` goes: under that cell while the
    /// publisher remembers it.
    fn target_of(&self, origin: ExecId) -> Option<(Arc<Incoming>, bool)> {
        if self.current.as_ref().is_some_and(|c| c.id == origin) {
            return self.target();
        }
        self.recent
            .iter()
            .rev()
            .find(|(id, ..)| *id == origin)
            .map(|(_, request, silent)| (request.clone(), !silent))
            .or_else(|| self.target())
    }

    async fn output(&mut self, output: Output, target: Option<(Arc<Incoming>, bool)>) {
        let Some((parent, visible)) = target else {
            if let Output::InputRequest { .. } = output {
                tracing::warn!("input request with no cell to attribute it to");
            }
            return;
        };
        if let Output::Stream { stderr, text } = output {
            if !visible {
                return;
            }
            match &mut self.pending {
                Some(p) if p.stderr == stderr && Arc::ptr_eq(&p.parent, &parent) => {
                    p.text.push_str(&text)
                }
                _ => {
                    self.flush();
                    self.pending = Some(Pending {
                        stderr,
                        text,
                        parent,
                        since: Instant::now(),
                    });
                }
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|p| p.text.len() >= STREAM_FLUSH_BYTES)
            {
                self.flush();
            }
            return;
        }
        self.flush();
        match output {
            Output::Stream { .. } => unreachable!("handled above"),
            Output::Display {
                data,
                metadata,
                display_id,
            } => {
                if visible {
                    self.publish(
                        &parent,
                        "display_data",
                        display_content(data, metadata, display_id),
                    );
                }
            }
            Output::Update {
                data,
                metadata,
                display_id,
            } => {
                // Updates target a display wherever it is; they are shown even from a silent cell.
                self.publish(
                    &parent,
                    "update_display_data",
                    display_content(data, metadata, Some(display_id)),
                );
            }
            Output::Clear { wait } => {
                if visible {
                    self.publish(&parent, "clear_output", json!({ "wait": wait }));
                }
            }
            Output::Result { data, metadata } => match &self.current {
                Some(cell) if !cell.silent => {
                    let content = json!({
                        "execution_count": cell.execution_count,
                        "data": data,
                        "metadata": metadata,
                    });
                    self.publish(&parent, "execute_result", content);
                }
                Some(_) => {}
                None => self.publish(
                    &parent,
                    "display_data",
                    display_content(data, metadata, None),
                ),
            },
            Output::InputRequest { prompt, password } => {
                let request = Outgoing::child_of(
                    &parent,
                    "input_request",
                    json!({ "prompt": prompt, "password": password }),
                );
                self.sender.reply(Channel::Stdin, request).await;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            let name = if p.stderr { "stderr" } else { "stdout" };
            self.publish(&p.parent, "stream", json!({ "name": name, "text": p.text }));
        }
    }

    fn publish(&self, parent: &Incoming, msg_type: &str, content: Value) {
        self.sender
            .publish(Outgoing::child_of(parent, msg_type, content));
    }
}

fn display_content(
    data: Map<String, Value>,
    metadata: Map<String, Value>,
    display_id: Option<String>,
) -> Value {
    let transient = match display_id {
        Some(id) => json!({ "display_id": id }),
        None => json!({}),
    };
    json!({ "data": data, "metadata": metadata, "transient": transient })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
