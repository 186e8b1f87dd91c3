//! Widgets that hold other content: `HBox`/`VBox` lay widgets out, `Output` shows printed
//! text and rich displays written to it from any task.

use super::Widget;
use super::model::{Model, Spec, common};
use crate::comm::Value;
use crate::display::Rich;
use crate::json;
use std::sync::{Arc, Mutex};

macro_rules! layout_box {
    ($(#[$doc:meta])* $name:ident, $model:literal, $view:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            model: Model,
            children: Arc<Vec<String>>,
        }

        displayable!($name, |w| format!("{}({} children)", stringify!($name), w.children.len()));

        impl $name {
            /// A box of `children`, e.g. `HBox::new(&[&slider, &label])`. The box keeps its
            /// children alive.
            pub fn new(children: &[&dyn Widget]) -> Self {
                let layout = Model::layout();
                let models: Vec<Model> = children.iter().map(|c| c.__model().clone()).collect();
                let refs = models.iter().map(Model::reference).collect();
                let mut fields = common(&layout, None);
                fields.extend([
                    ("box_style", Value::from("")),
                    ("children", Value::Array(refs)),
                ]);
                let ids = models.iter().map(|m| m.id().to_owned()).collect();
                let parts = std::iter::once(layout).chain(models).collect();
                let model = Model::open(Spec::controls($model, $view), fields, parts);
                $name { model, children: Arc::new(ids) }
            }
        }
    };
}

layout_box!(
    /// Widgets side by side (`HBoxModel`).
    HBox, "HBoxModel", "HBoxView"
);
layout_box!(
    /// Widgets one above the other (`VBoxModel`).
    VBox, "VBoxModel", "VBoxView"
);

/// An output area (`OutputModel` of `@jupyter-widgets/output`): text and rich displays
/// written to it from any cell or task appear in it, wherever it is shown.
#[derive(Clone)]
pub struct Output {
    model: Model,
    outputs: Arc<Mutex<Vec<Value>>>,
}

displayable!(Output, |w| format!(
    "Output({} outputs)",
    w.outputs.lock().unwrap().len()
));

impl Default for Output {
    fn default() -> Self {
        Output::new()
    }
}

impl Output {
    pub fn new() -> Self {
        let layout = Model::layout();
        let spec = Spec {
            model: "OutputModel",
            view: Some("OutputView"),
            module: "@jupyter-widgets/output",
            view_module: "@jupyter-widgets/output",
            version: "1.0.0",
        };
        let mut fields = common(&layout, None);
        fields.extend([
            ("msg_id", Value::from("")),
            ("outputs", Value::Array(Vec::new())),
        ]);
        let model = Model::open(spec, fields, vec![layout]);
        Output {
            model,
            outputs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Appends text as the output's stdout (joined to the stdout text before it).
    pub fn append_stdout(&self, text: &str) {
        self.append_stream("stdout", text);
    }

    pub fn append_stderr(&self, text: &str) {
        self.append_stream("stderr", text);
    }

    /// Appends a rich display (anything [`crate::display`] takes).
    pub fn display(&self, value: &impl Rich) {
        let bundle = value.bundle();
        let data = json::parse(&bundle.data_json()).unwrap_or(Value::Object(Vec::new()));
        let metadata = json::parse(&bundle.metadata_json()).unwrap_or(Value::Object(Vec::new()));
        self.change(|outputs| {
            outputs.push(Value::Object(vec![
                ("output_type".to_owned(), Value::from("display_data")),
                ("data".to_owned(), data),
                ("metadata".to_owned(), metadata),
            ]))
        });
    }

    /// Removes everything shown.
    pub fn clear(&self) {
        self.change(Vec::clear);
    }

    /// Replaces everything shown by one display (one update: no flicker in animations).
    pub fn replace(&self, value: &impl Rich) {
        self.change(Vec::clear);
        self.display(value);
    }

    /// How many outputs the area holds (consecutive text of one stream counts once).
    pub fn len(&self) -> usize {
        self.outputs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append_stream(&self, name: &str, text: &str) {
        self.change(|outputs| {
            if let Some(Value::Object(last)) = outputs.last_mut() {
                let same = last
                    .iter()
                    .any(|(k, v)| k == "name" && v.as_str() == Some(name));
                if same
                    && let Some((_, Value::String(previous))) =
                        last.iter_mut().find(|(k, _)| k == "text")
                {
                    previous.push_str(text);
                    return;
                }
            }
            outputs.push(Value::Object(vec![
                ("output_type".to_owned(), Value::from("stream")),
                ("name".to_owned(), Value::from(name)),
                ("text".to_owned(), Value::from(text)),
            ]));
        });
    }

    /// Applies `f` to the outputs and sends the new list, under one lock so that writers on
    /// different tasks cannot reorder their updates.
    fn change(&self, f: impl FnOnce(&mut Vec<Value>)) {
        let mut outputs = self.outputs.lock().unwrap();
        f(&mut outputs);
        self.model
            .set(vec![("outputs", Value::Array(outputs.clone()))]);
    }
}
