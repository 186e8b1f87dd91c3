//! A widget model: its state, kept here and mirrored in the front end over a `jupyter.widget`
//! comm (protocol 2.1: `comm_open` with `state` and `buffer_paths`, `update` both ways,
//! `request_state`, `custom`).

use crate::comm::{Comm, CommMessage, Value};
use crate::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The widget message protocol version sent with each `comm_open`.
pub(crate) const PROTOCOL_VERSION: &str = "2.1.0";

/// Where a model's JavaScript classes live.
#[derive(Clone, Copy)]
pub struct Spec {
    pub model: &'static str,
    pub view: Option<&'static str>,
    pub module: &'static str,
    pub view_module: &'static str,
    pub version: &'static str,
}

impl Spec {
    /// A model and view of `@jupyter-widgets/controls` 2.0.0.
    pub const fn controls(model: &'static str, view: &'static str) -> Spec {
        Spec {
            model,
            view: Some(view),
            module: "@jupyter-widgets/controls",
            view_module: "@jupyter-widgets/controls",
            version: "2.0.0",
        }
    }

    /// A style model (`@jupyter-widgets/controls`, shown by the base `StyleView`).
    pub const fn style(model: &'static str) -> Spec {
        Spec {
            model,
            view: Some("StyleView"),
            module: "@jupyter-widgets/controls",
            view_module: "@jupyter-widgets/base",
            version: "2.0.0",
        }
    }
}

/// The CSS properties of a `LayoutModel` (all unset: the front end's defaults apply).
const LAYOUT_PROPERTIES: [&str; 39] = [
    "align_content",
    "align_items",
    "align_self",
    "border_bottom",
    "border_left",
    "border_right",
    "border_top",
    "bottom",
    "display",
    "flex",
    "flex_flow",
    "grid_area",
    "grid_auto_columns",
    "grid_auto_flow",
    "grid_auto_rows",
    "grid_column",
    "grid_gap",
    "grid_row",
    "grid_template_areas",
    "grid_template_columns",
    "grid_template_rows",
    "height",
    "justify_content",
    "justify_items",
    "left",
    "margin",
    "max_height",
    "max_width",
    "min_height",
    "min_width",
    "object_fit",
    "object_position",
    "order",
    "overflow",
    "padding",
    "right",
    "top",
    "visibility",
    "width",
];

type UpdateHook = Box<dyn Fn(&[(String, Value)]) + Send + Sync>;
type CustomHook = Box<dyn Fn(&Value) + Send + Sync>;

pub struct ModelInner {
    comm: Comm,
    spec: Spec,
    state: Mutex<BTreeMap<String, Value>>,
    /// Layout, style and children: they live as long as this model.
    _parts: Vec<Model>,
    on_update: OnceLock<UpdateHook>,
    on_custom: OnceLock<CustomHook>,
    /// Woken on every change, from either side (for `interact`).
    listeners: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<()>>>,
}

/// A handle to one widget model; the comm closes when the last handle goes.
#[derive(Clone)]
pub struct Model(Arc<ModelInner>);

/// Every live model, for the front end's `request_states`.
static MODELS: Mutex<BTreeMap<String, Weak<ModelInner>>> = Mutex::new(BTreeMap::new());

impl Model {
    /// Creates the model and opens its comm with the full state: `fields` plus the module and
    /// class names. `parts` are models this one refers to (`IPY_MODEL_<id>`) and keeps alive.
    pub fn open(spec: Spec, fields: Vec<(&str, Value)>, parts: Vec<Model>) -> Model {
        let mut state: BTreeMap<String, Value> = BTreeMap::new();
        let names = [
            ("_model_name", Some(spec.model)),
            ("_model_module", Some(spec.module)),
            ("_model_module_version", Some(spec.version)),
            ("_view_name", spec.view),
            ("_view_module", Some(spec.view_module)),
            ("_view_module_version", Some(spec.version)),
        ];
        for (key, value) in names {
            state.insert(key.to_owned(), value.map_or(Value::Null, Value::from));
        }
        for (key, value) in fields {
            state.insert(key.to_owned(), value);
        }
        let data = json::object([
            ("state", state_json(&state)),
            ("buffer_paths", "[]".to_owned()),
        ]);
        let metadata = json::object([("version", json::string(PROTOCOL_VERSION))]);
        let comm = Comm::open("jupyter.widget", &data, &metadata, &[]);
        let inner = Arc::new(ModelInner {
            comm,
            spec,
            state: Mutex::new(state),
            _parts: parts,
            on_update: OnceLock::new(),
            on_custom: OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        inner.comm.on_message(move |message| {
            if let Some(inner) = weak.upgrade() {
                Model(inner).handle(message);
            }
        });
        MODELS
            .lock()
            .unwrap()
            .insert(inner.comm.id().to_owned(), Arc::downgrade(&inner));
        Model(inner)
    }

    /// A `LayoutModel` with every CSS property unset.
    pub fn layout() -> Model {
        let spec = Spec {
            model: "LayoutModel",
            view: Some("LayoutView"),
            module: "@jupyter-widgets/base",
            view_module: "@jupyter-widgets/base",
            version: "2.0.0",
        };
        let mut fields: Vec<(&str, Value)> = LAYOUT_PROPERTIES
            .iter()
            .map(|k| (*k, Value::Null))
            .collect();
        fields.push(("_view_count", Value::Null));
        Model::open(spec, fields, Vec::new())
    }

    pub fn id(&self) -> &str {
        self.0.comm.id()
    }

    /// How other models refer to this one.
    pub fn reference(&self) -> Value {
        Value::from(format!("IPY_MODEL_{}", self.id()))
    }

    /// Called with the fields the front end changed, after they are stored.
    pub fn on_update(&self, hook: impl Fn(&[(String, Value)]) + Send + Sync + 'static) {
        let _ = self.0.on_update.set(Box::new(hook));
    }

    /// Called with the content of each `custom` message.
    pub fn on_custom(&self, hook: impl Fn(&Value) + Send + Sync + 'static) {
        let _ = self.0.on_custom.set(Box::new(hook));
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.0.state.lock().unwrap().get(key).cloned()
    }

    /// Changes fields here and in the front end (one `update` message).
    pub fn set(&self, fields: Vec<(&str, Value)>) {
        let changed: BTreeMap<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        {
            let mut state = self.0.state.lock().unwrap();
            for (key, value) in &changed {
                state.insert(key.clone(), value.clone());
            }
            // Sent under the lock: two tasks setting at once reach the front end in the
            // order they changed the state.
            self.send_update(&changed);
        }
        self.notify();
    }

    /// A receiver woken (with `()`) whenever the model changes.
    pub fn listen(&self) -> tokio::sync::mpsc::UnboundedReceiver<()> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.0.listeners.lock().unwrap().push(tx);
        rx
    }

    fn notify(&self) {
        self.0
            .listeners
            .lock()
            .unwrap()
            .retain(|listener| listener.send(()).is_ok());
    }

    fn send_update(&self, fields: &BTreeMap<String, Value>) {
        let data = json::object([
            ("method", json::string("update")),
            ("state", state_json(fields)),
            ("buffer_paths", "[]".to_owned()),
        ]);
        self.0.comm.send(&data, &[]);
    }

    /// The entry of this model in an `update_states` reply.
    fn saved_state(&self) -> String {
        let spec = self.0.spec;
        json::object([
            ("model_name", json::string(spec.model)),
            ("model_module", json::string(spec.module)),
            ("model_module_version", json::string(spec.version)),
            ("state", state_json(&self.0.state.lock().unwrap())),
        ])
    }

    fn handle(&self, message: &CommMessage) {
        let method = message.data.get("method").and_then(Value::as_str);
        match method {
            Some("update") => {
                let Some(fields) = message.data.get("state").and_then(Value::as_object) else {
                    return;
                };
                {
                    let mut state = self.0.state.lock().unwrap();
                    for (key, value) in fields {
                        state.insert(key.clone(), value.clone());
                    }
                }
                if let Some(hook) = self.0.on_update.get() {
                    hook(fields);
                }
                self.notify();
            }
            Some("request_state") => {
                let state = self.0.state.lock().unwrap();
                self.send_update(&state);
            }
            Some("custom") => {
                if let Some(hook) = self.0.on_custom.get() {
                    hook(message.data.get("content").unwrap_or(&Value::Null));
                }
            }
            _ => {}
        }
    }
}

impl Drop for ModelInner {
    fn drop(&mut self) {
        let id = self.comm.id().to_owned();
        {
            let mut models = MODELS.lock().unwrap();
            if models.get(&id).is_some_and(|w| w.strong_count() == 0) {
                models.remove(&id);
            }
        }
        // The comm closes as `self.comm` drops, unless a clone of it is still out.
        self.comm.close();
    }
}

fn state_json(state: &BTreeMap<String, Value>) -> String {
    json::object(state.iter().map(|(k, v)| (k.as_str(), v.to_json())))
}

/// Answers a `jupyter.widget.control` comm: `request_states` gets every live model's state.
pub(crate) fn open_control(comm: Comm, _open: CommMessage) {
    let reply_on = comm.clone();
    comm.on_message(move |message| {
        if message.data.get("method").and_then(Value::as_str) != Some("request_states") {
            return;
        }
        let models: Vec<Model> = MODELS
            .lock()
            .unwrap()
            .values()
            .filter_map(Weak::upgrade)
            .map(Model)
            .collect();
        let states = json::object(models.iter().map(|m| (m.id(), m.saved_state())));
        let data = json::object([
            ("method", json::string("update_states")),
            ("states", states),
            ("buffer_paths", "[]".to_owned()),
        ]);
        reply_on.send(&data, &[]);
    });
}

/// Fields every DOM widget has, plus its layout (and style, if any) references.
pub(super) fn common(layout: &Model, style: Option<&Model>) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("_dom_classes", Value::Array(Vec::new())),
        ("_view_count", Value::Null),
        ("tabbable", Value::Null),
        ("tooltip", Value::Null),
        ("layout", layout.reference()),
    ];
    if let Some(style) = style {
        fields.push(("style", style.reference()));
    }
    fields
}
