//! The controls that choose or act: the dropdown (a selection among labels) and the button
//! (a stream of clicks). States follow ipywidgets 8 like the value controls in `controls.rs`.

use super::controls::{described, style, with_text_style};
use super::model::{Model, Spec, common};
use crate::comm::Value;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// A drop-down list (`DropdownModel`); its value is the selected label, if any.
#[derive(Clone)]
pub struct Dropdown {
    model: Model,
    options: Arc<Vec<String>>,
    index: Arc<watch::Sender<Option<usize>>>,
    value: Arc<watch::Sender<Option<String>>>,
}

displayable!(Dropdown, |w| format!("Dropdown(value={:?})", w.value()));

impl Dropdown {
    /// A list of `options` with the first one selected.
    pub fn new<S: Into<String>>(options: impl IntoIterator<Item = S>) -> Self {
        let options: Vec<String> = options.into_iter().map(Into::into).collect();
        let first = (!options.is_empty()).then_some(0);
        let layout = Model::layout();
        let style = style("DescriptionStyleModel", &[], true);
        let mut fields = described("");
        fields.extend(common(&layout, Some(&style)));
        let labels = options.iter().map(|o| Value::from(o.as_str())).collect();
        fields.extend([
            ("_options_labels", Value::Array(labels)),
            ("disabled", Value::from(false)),
            ("index", index_value(first)),
        ]);
        let spec = Spec::controls("DropdownModel", "DropdownView");
        let model = Model::open(spec, fields, vec![layout, style]);
        let options = Arc::new(options);
        let index = Arc::new(watch::Sender::new(first));
        let value = Arc::new(watch::Sender::new(first.map(|i| options[i].clone())));
        let (index_tx, value_tx, labels) = (index.clone(), value.clone(), options.clone());
        model.on_update(move |changed| {
            if let Some((_, v)) = changed.iter().rev().find(|(k, _)| k == "index") {
                let i = v.as_i64().and_then(|i| usize::try_from(i).ok());
                let i = i.filter(|&i| i < labels.len());
                index_tx.send_replace(i);
                value_tx.send_replace(i.map(|i| labels[i].clone()));
            }
        });
        Dropdown {
            model,
            options,
            index,
            value,
        }
    }

    /// The selected label.
    pub fn value(&self) -> Option<String> {
        self.value.borrow().clone()
    }

    pub fn index(&self) -> Option<usize> {
        *self.index.borrow()
    }

    pub fn options(&self) -> &[String] {
        &self.options
    }

    /// Wakes on every change of the selection.
    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.value.subscribe()
    }

    /// Selects the option at `index` (None: no selection); an index past the end selects none.
    pub fn set_index(&self, index: Option<usize>) {
        let index = index.filter(|&i| i < self.options.len());
        self.index.send_replace(index);
        self.value
            .send_replace(index.map(|i| self.options[i].clone()));
        self.model.set(vec![("index", index_value(index))]);
    }

    /// Selects the option labelled `label`; false if there is none.
    pub fn set_value(&self, label: &str) -> bool {
        let found = self.options.iter().position(|o| o == label);
        if found.is_some() {
            self.set_index(found);
        }
        found.is_some()
    }

    pub fn description(self, text: &str) -> Self {
        self.model.set(vec![("description", Value::from(text))]);
        self
    }
}

fn index_value(index: Option<usize>) -> Value {
    index.map_or(Value::Null, |i| Value::from(i as i64))
}

/// A button (`ButtonModel`); its clicks arrive as a stream ([`Button::clicks`]).
#[derive(Clone)]
pub struct Button {
    model: Model,
    clicks: Arc<broadcast::Sender<()>>,
}

displayable!(Button, |w| format!("Button(description={:?})", w.label()));

impl Button {
    pub fn new(description: &str) -> Self {
        let layout = Model::layout();
        let style = style("ButtonStyleModel", &with_text_style("button_color"), false);
        let mut fields = common(&layout, Some(&style));
        fields.extend([
            ("button_style", Value::from("")),
            ("description", Value::from(description)),
            ("disabled", Value::from(false)),
            ("icon", Value::from("")),
        ]);
        let spec = Spec::controls("ButtonModel", "ButtonView");
        let model = Model::open(spec, fields, vec![layout, style]);
        let clicks = Arc::new(broadcast::Sender::new(256));
        let sender = clicks.clone();
        model.on_custom(move |content| {
            if content.get("event").and_then(Value::as_str) == Some("click") {
                let _ = sender.send(());
            }
        });
        Button { model, clicks }
    }

    /// The button's label.
    pub fn label(&self) -> String {
        self.model
            .get("description")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// `"primary"`, `"success"`, `"info"`, `"warning"`, `"danger"` or `""`.
    pub fn button_style(self, style: &str) -> Self {
        self.model.set(vec![("button_style", Value::from(style))]);
        self
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.model.set(vec![("disabled", Value::from(disabled))]);
    }

    /// Clicks the button from code (every [`Clicks`] stream sees it, as a user's click).
    pub fn click(&self) {
        let _ = self.clicks.send(());
    }

    /// The clicks from now on. Each call gives an independent stream.
    pub fn clicks(&self) -> Clicks {
        Clicks(self.clicks.subscribe())
    }
}

/// A stream of button clicks.
pub struct Clicks(broadcast::Receiver<()>);

impl Clicks {
    /// Waits for the next click; None once the button is gone. Clicks beyond 256 unread ones
    /// are counted as one.
    pub async fn next(&mut self) -> Option<()> {
        match self.0.recv().await {
            Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(()),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
