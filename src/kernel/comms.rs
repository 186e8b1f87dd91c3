//! Comm messages from the front end, served beside the shell queue.
//!
//! The shell queue runs requests strictly in order, so a `comm_msg` behind a running cell
//! would wait for it, and a cell awaiting a widget change would never see it. Jupyter widgets
//! expect better (ipykernel 7 serves them on a subshell, JupyterLab sends them there), so
//! [`split_shell`] takes `comm_open`, `comm_msg`, `comm_close` and `comm_info_request` off the
//! shell socket as they arrive and handles them at once; every other request keeps its place in
//! the ordered queue. Each comm request gets `busy`/`idle` like any shell request: the widget
//! front end throttles a model's updates until the `idle` of its previous one.
//!
//! What the runtime sends while it handles a front end's comm message (a `request_state`
//! answer, a closed comm) is parented to that message: [`CommParents`] remembers recent
//! requests by token for the publisher.

use crate::engine::Engine;
use crate::engine::comms::ClientComm;
use crate::wire::connection::Channel;
use crate::wire::sockets::Sender;
use crate::wire::{Incoming, Outgoing};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How many recent comm requests stay addressable as parents.
const PARENTS_KEPT: usize = 4096;

/// Recent comm requests by token.
#[derive(Default)]
pub struct CommParents {
    recent: Mutex<VecDeque<(u64, Arc<Incoming>)>>,
    next: AtomicU64,
}

impl CommParents {
    fn remember(&self, request: &Incoming) -> u64 {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == PARENTS_KEPT {
            recent.pop_front();
        }
        recent.push_back((token, Arc::new(request.clone())));
        token
    }

    /// The request a token names, if it is still remembered.
    pub fn get(&self, token: u64) -> Option<Arc<Incoming>> {
        let recent = self.recent.lock().unwrap();
        recent
            .iter()
            .rev()
            .find(|(t, _)| *t == token)
            .map(|(_, r)| r.clone())
    }
}

fn is_comm_request(msg_type: &str) -> bool {
    matches!(
        msg_type,
        "comm_open" | "comm_msg" | "comm_close" | "comm_info_request"
    )
}

/// Serves comm requests from `shell` as they arrive and returns the queue of all others, in
/// their order.
pub fn split_shell(
    mut shell: mpsc::Receiver<Incoming>,
    sender: Sender,
    engine: Engine,
    parents: Arc<CommParents>,
) -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(request) = shell.recv().await {
            if is_comm_request(request.msg_type()) {
                handle(&request, &sender, &engine, &parents).await;
            } else if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn handle(request: &Incoming, sender: &Sender, engine: &Engine, parents: &CommParents) {
    let status = |state: &str| {
        sender.publish(Outgoing::child_of(
            request,
            "status",
            json!({ "execution_state": state }),
        ))
    };
    status("busy");
    if request.msg_type() == "comm_info_request" {
        let target = request.content["target_name"].as_str();
        let comms: Map<String, Value> = engine
            .open_comms(target)
            .into_iter()
            .map(|(id, target)| (id, json!({ "target_name": target })))
            .collect();
        sender
            .reply(
                Channel::Shell,
                Outgoing::child_of(
                    request,
                    "comm_info_reply",
                    json!({"status": "ok", "comms": comms}),
                ),
            )
            .await;
    } else {
        engine.comm(ClientComm {
            msg_type: request.msg_type().to_owned(),
            content: request.content.clone(),
            buffers: request.buffers.iter().map(|b| b.to_vec()).collect(),
            token: parents.remember(request),
        });
    }
    status("idle");
}
