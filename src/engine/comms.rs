//! Comms (the Jupyter "custom messages"): which comms are open, and the translation between
//! Jupyter's comm messages and what travels on the link.
//!
//! Comms live in the evaluation process (the runtime crate owns their handlers). The kernel only
//! keeps the list of open comms (for `comm_info_request`), forwards the front end's
//! `comm_open`/`comm_msg`/`comm_close` to the runtime as a `comm <json>` control line, and turns
//! the runtime's `{"t":"comm",...}` frames into [`Output::Comm`]. Binary buffers travel as hex
//! on the link in both directions. When the evaluation process goes away, every comm it had
//! open is closed towards the front end.

use super::Output;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A comm message from the front end.
#[derive(Debug, Clone)]
pub struct ClientComm {
    /// `comm_open`, `comm_msg` or `comm_close`.
    pub msg_type: String,
    /// The message's content (`comm_id`, `data`, and `target_name` for `comm_open`).
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
    /// Names the request, so that what the runtime sends while handling it is parented to it.
    pub token: u64,
}

/// What to do with a comm message from the front end.
#[derive(Debug)]
pub enum ClientAction {
    /// Send this control line to the runtime.
    Forward(String),
    /// The runtime cannot take it: answer the front end with this instead.
    Answer(Output),
    /// Nothing to do (logged).
    Ignore,
}

/// The comms open in the evaluation process: comm id → target name.
#[derive(Default)]
pub struct CommRegistry {
    open: Mutex<BTreeMap<String, String>>,
}

impl CommRegistry {
    /// Open comms as `(comm_id, target_name)`, only those of `target` if given.
    pub fn list(&self, target: Option<&str>) -> Vec<(String, String)> {
        self.open
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| target.is_none_or(|wanted| wanted == t.as_str()))
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect()
    }

    /// Decides what a front end's comm message becomes; `runtime_connected` says whether the
    /// runtime's control connection is there to take it.
    pub fn client_message(&self, message: ClientComm, runtime_connected: bool) -> ClientAction {
        let content = &message.content;
        let Some(comm_id) = content["comm_id"].as_str().map(str::to_owned) else {
            tracing::warn!(msg_type = %message.msg_type, "comm message without a comm_id ignored");
            return ClientAction::Ignore;
        };
        let mut open = self.open.lock().unwrap();
        match message.msg_type.as_str() {
            "comm_open" => {
                let target = content["target_name"].as_str().unwrap_or("").to_owned();
                if !runtime_connected {
                    // No evaluation process yet: no target can be registered, so refuse the
                    // comm as the spec asks (the front end sees it closed at once).
                    tracing::info!(%comm_id, %target, "comm_open before the runtime started");
                    return ClientAction::Answer(Output::Comm {
                        msg_type: "comm_close".to_owned(),
                        content: json!({"comm_id": comm_id, "data": {}}),
                        metadata: json!({}),
                        buffers: Vec::new(),
                        reply_to: Some(message.token),
                    });
                }
                open.insert(comm_id.clone(), target);
            }
            "comm_msg" | "comm_close" => {
                if !open.contains_key(&comm_id) {
                    tracing::warn!(
                        %comm_id,
                        msg_type = %message.msg_type,
                        "message for an unknown comm ignored"
                    );
                    return ClientAction::Ignore;
                }
                if message.msg_type == "comm_close" {
                    open.remove(&comm_id);
                }
            }
            other => {
                tracing::warn!("not a comm message: {other}");
                return ClientAction::Ignore;
            }
        }
        drop(open);
        ClientAction::Forward(control_line(&message))
    }

    /// A `{"t":"comm",...}` frame from the runtime, as the output to publish (None if
    /// malformed). Keeps the list of open comms up to date.
    pub fn runtime_message(&self, message: &Value) -> Option<Output> {
        let msg_type = message["msg_type"].as_str()?;
        let comm_id = message["comm_id"].as_str()?.to_owned();
        let mut content = Map::new();
        content.insert("comm_id".to_owned(), Value::String(comm_id.clone()));
        content.insert("data".to_owned(), object_or_empty(&message["data"]));
        match msg_type {
            "comm_open" => {
                let target = message["target_name"].as_str()?.to_owned();
                content.insert("target_name".to_owned(), Value::String(target.clone()));
                self.open.lock().unwrap().insert(comm_id, target);
            }
            "comm_msg" => {}
            "comm_close" => {
                // The runtime also closes comms the front end asked to close; only one
                // comm_close goes out for a comm.
                self.open.lock().unwrap().remove(&comm_id)?;
            }
            other => {
                tracing::warn!("unknown comm message kind from the runtime: {other}");
                return None;
            }
        }
        let buffers = message["buffers"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|h| hex::decode(h.as_str()?).ok())
                    .collect()
            })
            .unwrap_or_default();
        Some(Output::Comm {
            msg_type: msg_type.to_owned(),
            content: Value::Object(content),
            metadata: object_or_empty(&message["metadata"]),
            buffers,
            reply_to: message["reply_to"].as_u64(),
        })
    }

    /// The evaluation process is gone and its comms with it: the closes to send.
    pub fn close_all(&self) -> Vec<Output> {
        let open = std::mem::take(&mut *self.open.lock().unwrap());
        open.into_keys()
            .map(|comm_id| Output::Comm {
                msg_type: "comm_close".to_owned(),
                content: json!({"comm_id": comm_id, "data": {}}),
                metadata: json!({}),
                buffers: Vec::new(),
                reply_to: None,
            })
            .collect()
    }
}

fn object_or_empty(value: &Value) -> Value {
    match value {
        Value::Object(_) => value.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// The control line that carries a front end's comm message to the runtime. serde_json writes
/// no raw newline, so the JSON fits on one line.
fn control_line(message: &ClientComm) -> String {
    let content = &message.content;
    let line = json!({
        "msg_type": message.msg_type,
        "comm_id": content["comm_id"],
        "target_name": content["target_name"],
        "data": object_or_empty(&content["data"]),
        "buffers": message.buffers.iter().map(hex::encode).collect::<Vec<_>>(),
        "reply_to": message.token,
    });
    format!("comm {line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(msg_type: &str, content: Value) -> ClientComm {
        ClientComm {
            msg_type: msg_type.to_owned(),
            content,
            buffers: vec![vec![0, 1, 255]],
            token: 7,
        }
    }

    #[test]
    fn client_comms_are_tracked_and_forwarded_with_their_buffers() {
        let comms = CommRegistry::default();
        let open = client(
            "comm_open",
            json!({"comm_id": "c1", "target_name": "t", "data": {"x": 1}}),
        );
        let ClientAction::Forward(line) = comms.client_message(open, true) else {
            panic!("not forwarded")
        };
        let sent: Value = serde_json::from_str(line.strip_prefix("comm ").unwrap()).unwrap();
        assert_eq!(sent["buffers"], json!(["0001ff"]));
        assert_eq!(sent["reply_to"], 7);
        assert_eq!(sent["data"], json!({"x": 1}));
        assert_eq!(comms.list(Some("t")), [("c1".to_owned(), "t".to_owned())]);
        assert!(comms.list(Some("other")).is_empty());
        // Unknown comm ids are ignored, not fatal.
        let stray = client("comm_msg", json!({"comm_id": "nope", "data": {}}));
        assert!(matches!(
            comms.client_message(stray, true),
            ClientAction::Ignore
        ));
        let close = client("comm_close", json!({"comm_id": "c1", "data": {}}));
        assert!(matches!(
            comms.client_message(close, true),
            ClientAction::Forward(_)
        ));
        assert!(comms.list(None).is_empty());
        // The runtime's own close of that comm is not sent again.
        let echoed = json!({"t": "comm", "msg_type": "comm_close", "comm_id": "c1"});
        assert!(comms.runtime_message(&echoed).is_none());
    }

    #[test]
    fn comm_open_without_runtime_is_answered_with_a_close() {
        let comms = CommRegistry::default();
        let open = client("comm_open", json!({"comm_id": "c2", "target_name": "t"}));
        match comms.client_message(open, false) {
            ClientAction::Answer(Output::Comm {
                msg_type, reply_to, ..
            }) => {
                assert_eq!(msg_type, "comm_close");
                assert_eq!(reply_to, Some(7));
            }
            other => panic!("{other:?}"),
        }
        assert!(comms.list(None).is_empty());
    }

    #[test]
    fn runtime_comms_become_outputs_and_close_when_the_process_dies() {
        let comms = CommRegistry::default();
        let open = json!({"t": "comm", "msg_type": "comm_open", "comm_id": "w",
                          "target_name": "jupyter.widget", "data": {"state": {}},
                          "metadata": {"version": "2.1.0"},
                          "buffers": ["6869"], "reply_to": null});
        let Some(Output::Comm {
            content,
            metadata,
            buffers,
            ..
        }) = comms.runtime_message(&open)
        else {
            panic!("no output")
        };
        assert_eq!(content["target_name"], "jupyter.widget");
        assert_eq!(buffers, vec![b"hi".to_vec()]);
        assert_eq!(metadata["version"], "2.1.0");
        assert_eq!(comms.list(Some("jupyter.widget")).len(), 1);
        let closes = comms.close_all();
        assert_eq!(closes.len(), 1);
        assert!(comms.list(None).is_empty());
    }
}
