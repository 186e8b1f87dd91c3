//! Jupyter comms: message channels between code in the notebook and the front end, the layer
//! widgets are built on.
//!
//! - [`Comm::open`] opens a comm from the kernel side; [`Comm::send`] sends on it (JSON data
//!   plus binary buffers); [`Comm::on_message`] handles what the front end sends back.
//! - [`register_target`] accepts comms the front end opens for a target name.
//! - A comm opened here closes when its last handle is dropped (or on [`Comm::close`]); one the
//!   front end opened lives until the front end closes it or [`Comm::close`] is called.
//!
//! Front-end messages arrive on the runtime's control connection (`comm <json>` lines) and are
//! handled on its thread, also while a cell runs. Messages sent while one is being handled are
//! marked as its answer, so the kernel parents them to it (as `request_state` expects).

use crate::{json, link};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use crate::json::{Value, parse};

/// A message from the front end on a comm.
#[derive(Debug, Clone)]
pub struct CommMessage {
    /// The message's `data`.
    pub data: Value,
    /// Its binary buffers.
    pub buffers: Vec<Vec<u8>>,
}

type Handler = Arc<dyn Fn(&CommMessage) + Send + Sync>;
type TargetHandler = Arc<dyn Fn(Comm, CommMessage) + Send + Sync>;

struct CommInner {
    id: String,
    target: String,
    handler: Mutex<Option<Handler>>,
    closed: AtomicBool,
}

/// One comm. Clones are handles to the same comm.
#[derive(Clone)]
pub struct Comm {
    inner: Arc<CommInner>,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("id", &self.inner.id)
            .field("target", &self.inner.target)
            .finish()
    }
}

#[derive(Default)]
struct Registry {
    comms: HashMap<String, Weak<CommInner>>,
    /// Comms the front end opened, kept alive until it closes them.
    kept: HashMap<String, Comm>,
    targets: HashMap<String, TargetHandler>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The front-end message being handled on this thread, as the kernel numbered it.
    static REPLY_TO: Cell<Option<u64>> = const { Cell::new(None) };
}

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(REGISTRY
        .lock()
        .unwrap()
        .get_or_insert_with(Registry::default))
}

/// Sends one comm message to the kernel.
fn send_raw(
    msg_type: &str,
    comm_id: &str,
    target: Option<&str>,
    data: &str,
    metadata: &str,
    buffers: &[Vec<u8>],
) {
    let buffers: Vec<String> = buffers
        .iter()
        .map(|b| json::string(&json::hex(b)))
        .collect();
    let reply_to = REPLY_TO.with(Cell::get);
    link::send(&json::object([
        ("t", json::string("comm")),
        ("msg_type", json::string(msg_type)),
        ("comm_id", json::string(comm_id)),
        ("target_name", json::opt_string(target)),
        ("data", data.to_owned()),
        ("metadata", metadata.to_owned()),
        ("buffers", format!("[{}]", buffers.join(","))),
        (
            "reply_to",
            reply_to.map_or("null".to_owned(), |r| r.to_string()),
        ),
    ]));
}

impl Comm {
    /// Opens a comm to the front end's `target`, with `data` (a JSON object as text),
    /// `metadata` (a JSON object as text, `{}` if none) and binary buffers.
    pub fn open(target: &str, data: &str, metadata: &str, buffers: &[Vec<u8>]) -> Comm {
        let id = format!(
            "rustloop-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let comm = Comm::register(id, target);
        send_raw(
            "comm_open",
            &comm.inner.id,
            Some(target),
            data,
            metadata,
            buffers,
        );
        comm
    }

    fn register(id: String, target: &str) -> Comm {
        let comm = Comm {
            inner: Arc::new(CommInner {
                id: id.clone(),
                target: target.to_owned(),
                handler: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        };
        with_registry(|r| r.comms.insert(id, Arc::downgrade(&comm.inner)));
        comm
    }

    /// The comm's id (a widget's `model_id`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Whether the comm was closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Sends `data` (a JSON object as text) and binary buffers to the front end.
    pub fn send(&self, data: &str, buffers: &[Vec<u8>]) {
        if !self.is_closed() {
            send_raw("comm_msg", &self.inner.id, None, data, "{}", buffers);
        }
    }

    /// Calls `handler` for each message the front end sends on this comm (on the runtime's
    /// control thread: keep it short, hand long work to a task). Replaces an earlier handler.
    pub fn on_message(&self, handler: impl Fn(&CommMessage) + Send + Sync + 'static) {
        *self.inner.handler.lock().unwrap() = Some(Arc::new(handler));
    }

    /// Closes the comm (once; later sends are dropped).
    pub fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::SeqCst) {
            send_raw("comm_close", &self.inner.id, None, "{}", "{}", &[]);
        }
        // A handler holding a clone of its own comm would otherwise keep it forever.
        let handler = self.inner.handler.lock().unwrap().take();
        drop(handler);
        let id = self.inner.id.clone();
        let kept = with_registry(|r| {
            r.comms.remove(&id);
            r.kept.remove(&id)
        });
        drop(kept);
    }
}

impl Drop for CommInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            send_raw("comm_close", &self.id, None, "{}", "{}", &[]);
        }
        let id = self.id.clone();
        with_registry(|r| {
            // A new comm cannot reuse the id; only remove a dead entry.
            if r.comms.get(&id).is_some_and(|w| w.strong_count() == 0) {
                r.comms.remove(&id);
            }
        });
    }
}

/// Accepts comms the front end opens for `target`: `handler` gets the new comm and the
/// `comm_open` message. The comm stays open until the front end closes it or
/// [`Comm::close`] is called.
pub fn register_target(target: &str, handler: impl Fn(Comm, CommMessage) + Send + Sync + 'static) {
    with_registry(|r| r.targets.insert(target.to_owned(), Arc::new(handler)));
}

/// Handles one `comm` control line from the kernel (on the control thread).
pub(crate) fn dispatch(line: &str) {
    let Ok(message) = json::parse(line) else {
        return;
    };
    let text = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or("");
    let comm_id = text("comm_id").to_owned();
    let incoming = CommMessage {
        data: message.get("data").cloned().unwrap_or(Value::Null),
        buffers: message
            .get("buffers")
            .and_then(Value::as_array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|b| json::unhex_bytes(b.as_str()?))
            .collect(),
    };
    let reply_to = message.get("reply_to").and_then(Value::as_i64);
    REPLY_TO.with(|r| r.set(reply_to.map(|r| r as u64)));
    match text("msg_type") {
        "comm_open" => {
            let target = text("target_name");
            let handler = with_registry(|r| r.targets.get(target).cloned());
            let comm = Comm::register(comm_id.clone(), target);
            match handler {
                Some(handler) => {
                    with_registry(|r| r.kept.insert(comm_id, comm.clone()));
                    handler(comm, incoming);
                }
                // No such target: the spec asks for a comm_close (sent as the handle drops).
                None => drop(comm),
            }
        }
        "comm_msg" => {
            let comm = with_registry(|r| r.comms.get(&comm_id).and_then(Weak::upgrade));
            let handler = comm.and_then(|c| c.handler.lock().unwrap().clone());
            if let Some(handler) = handler {
                handler(&incoming);
            }
        }
        "comm_close" => {
            // Taken out under the lock, dropped after it (a drop takes the lock again).
            let (kept, comm) = with_registry(|r| {
                let kept = r.kept.remove(&comm_id);
                (kept, r.comms.remove(&comm_id).and_then(|w| w.upgrade()))
            });
            if let Some(comm) = &comm {
                comm.closed.store(true, Ordering::SeqCst);
                let handler = comm.handler.lock().unwrap().take();
                drop(handler);
            }
            drop((kept, comm));
        }
        _ => {}
    }
    REPLY_TO.with(|r| r.set(None));
}
