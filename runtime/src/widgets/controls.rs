//! The value controls: sliders, progress bar, checkbox, text and labels (`choices.rs` has the
//! dropdown and the button). Their
//! states follow ipywidgets 8 (`@jupyter-widgets/controls` 2.0.0) key for key, each with its
//! `LayoutModel` and style model.

use super::model::{Model, Spec, common};
use crate::comm::Value;
use std::sync::Arc;
use tokio::sync::watch;

/// A value that a widget state field holds.
pub trait FieldValue: Clone + Send + Sync + 'static {
    fn to_value(&self) -> Value;
    fn from_value(value: &Value) -> Option<Self>;
}

impl FieldValue for i64 {
    fn to_value(&self) -> Value {
        Value::from(*self)
    }
    fn from_value(value: &Value) -> Option<i64> {
        value.as_i64()
    }
}

impl FieldValue for f64 {
    fn to_value(&self) -> Value {
        Value::from(*self)
    }
    fn from_value(value: &Value) -> Option<f64> {
        value.as_f64()
    }
}

impl FieldValue for bool {
    fn to_value(&self) -> Value {
        Value::from(*self)
    }
    fn from_value(value: &Value) -> Option<bool> {
        value.as_bool()
    }
}

impl FieldValue for String {
    fn to_value(&self) -> Value {
        Value::from(self.as_str())
    }
    fn from_value(value: &Value) -> Option<String> {
        value.as_str().map(str::to_owned)
    }
}

/// A style model with these fields set to null (and `description_width` to "" if asked).
pub(super) fn style(model: &'static str, nulls: &[&'static str], description_width: bool) -> Model {
    let mut fields: Vec<(&str, Value)> = nulls.iter().map(|k| (*k, Value::Null)).collect();
    fields.push(("_view_count", Value::Null));
    if description_width {
        fields.push(("description_width", Value::from("")));
    }
    Model::open(Spec::style(model), fields, Vec::new())
}

/// Fields of widgets with a description label.
pub(super) fn described(description: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("description", Value::from(description)),
        ("description_allow_html", Value::from(false)),
    ]
}

/// Opens a widget whose `key` field is mirrored in a watch channel.
fn open_watched<T: FieldValue>(
    spec: Spec,
    style: Option<Model>,
    key: &'static str,
    initial: T,
    mut fields: Vec<(&'static str, Value)>,
) -> (Model, Arc<watch::Sender<T>>) {
    let layout = Model::layout();
    fields.extend(common(&layout, style.as_ref()));
    fields.push((key, initial.to_value()));
    let parts = std::iter::once(layout).chain(style).collect();
    let model = Model::open(spec, fields, parts);
    let sender = Arc::new(watch::Sender::new(initial));
    let from_front_end = sender.clone();
    model.on_update(move |changed| {
        if let Some(value) = changed
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| T::from_value(v))
        {
            from_front_end.send_replace(value);
        }
    });
    (model, sender)
}

macro_rules! value_widget {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $key:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            model: Model,
            value: Arc<watch::Sender<$ty>>,
        }

        impl $name {
            /// The current value (the front end's latest, or the last one set here).
            pub fn value(&self) -> $ty {
                self.value.borrow().clone()
            }

            /// Wakes on every change of the value, from the front end or from code.
            pub fn watch(&self) -> watch::Receiver<$ty> {
                self.value.subscribe()
            }

            /// Sets the description shown beside the control.
            pub fn description(self, text: &str) -> Self {
                self.set_description(text);
                self
            }

            pub fn set_description(&self, text: &str) {
                self.model.set(vec![("description", Value::from(text))]);
            }

            /// Enables or disables user changes.
            pub fn disabled(self, disabled: bool) -> Self {
                self.model.set(vec![("disabled", Value::from(disabled))]);
                self
            }

            /// The watch first: `model.set` wakes `interact`, which must read the new value.
            fn store(&self, value: $ty) {
                let json = FieldValue::to_value(&value);
                self.value.send_replace(value);
                self.model.set(vec![($key, json)]);
            }
        }
    };
}

macro_rules! slider {
    ($(#[$doc:meta])* $name:ident, $model:literal, $view:literal, $ty:ty, $step:expr, $format:literal) => {
        value_widget!($(#[$doc])* $name, $ty, "value");
        displayable!($name, |w| format!("{}(value={})", stringify!($name), w.value()));

        impl $name {
            /// A slider at `value` between `min` and `max`.
            pub fn new(value: $ty, min: $ty, max: $ty) -> Self {
                let mut fields = described("");
                fields.extend([
                    ("behavior", Value::from("drag-tap")),
                    ("continuous_update", Value::from(true)),
                    ("disabled", Value::from(false)),
                    ("max", max.to_value()),
                    ("min", min.to_value()),
                    ("orientation", Value::from("horizontal")),
                    ("readout", Value::from(true)),
                    ("readout_format", Value::from($format)),
                    ("step", ($step).to_value()),
                ]);
                let style = style("SliderStyleModel", &["handle_color"], true);
                let value = clamp(value, min, max);
                let (model, value) = open_watched(
                    Spec::controls($model, $view), Some(style), "value", value, fields);
                $name { model, value }
            }

            /// Moves the slider (clamped to its range), here and in every view.
            pub fn set_value(&self, value: $ty) {
                let (min, max) = self.range();
                self.store(clamp(value, min, max));
            }

            /// The step between values.
            pub fn step(self, step: $ty) -> Self {
                self.model.set(vec![("step", step.to_value())]);
                self
            }

            fn range(&self) -> ($ty, $ty) {
                let get = |k| self.model.get(k).and_then(|v| <$ty>::from_value(&v));
                (get("min").unwrap_or(<$ty>::MIN), get("max").unwrap_or(<$ty>::MAX))
            }
        }
    };
}

fn clamp<T: PartialOrd>(value: T, min: T, max: T) -> T {
    if value < min {
        min
    } else if value > max {
        max
    } else {
        value
    }
}

slider!(
    /// A slider over integers (`IntSliderModel`).
    IntSlider, "IntSliderModel", "IntSliderView", i64, 1i64, "d"
);
slider!(
    /// A slider over floating-point numbers (`FloatSliderModel`).
    FloatSlider, "FloatSliderModel", "FloatSliderView", f64, 0.1f64, ".2f"
);

value_widget!(
    /// A progress bar over integers (`IntProgressModel`).
    IntProgress, i64, "value"
);
displayable!(IntProgress, |w| format!("IntProgress(value={})", w.value()));

impl IntProgress {
    /// A bar at `value` between `min` and `max`.
    pub fn new(value: i64, min: i64, max: i64) -> Self {
        let mut fields = described("");
        fields.extend([
            ("bar_style", Value::from("")),
            ("max", Value::from(max)),
            ("min", Value::from(min)),
            ("orientation", Value::from("horizontal")),
        ]);
        let style = style("ProgressStyleModel", &["bar_color"], true);
        let spec = Spec::controls("IntProgressModel", "ProgressView");
        let (model, value) = open_watched(spec, Some(style), "value", value, fields);
        IntProgress { model, value }
    }

    pub fn set_value(&self, value: i64) {
        self.store(value);
    }

    /// Adds `n` to the value (from any task).
    pub fn inc(&self, n: i64) {
        self.store(self.value() + n);
    }

    /// `"success"`, `"info"`, `"warning"`, `"danger"` or `""`.
    pub fn bar_style(self, style: &str) -> Self {
        self.set_bar_style(style);
        self
    }

    pub fn set_bar_style(&self, style: &str) {
        self.model.set(vec![("bar_style", Value::from(style))]);
    }

    /// Changes the maximum.
    pub fn set_max(&self, max: i64) {
        self.model.set(vec![("max", Value::from(max))]);
    }
}

value_widget!(
    /// A checkbox (`CheckboxModel`).
    Checkbox, bool, "value"
);
displayable!(Checkbox, |w| format!("Checkbox(value={})", w.value()));

impl Checkbox {
    pub fn new(value: bool) -> Self {
        let mut fields = described("");
        fields.extend([
            ("disabled", Value::from(false)),
            ("indent", Value::from(true)),
        ]);
        let style = style("CheckboxStyleModel", &["background"], true);
        let spec = Spec::controls("CheckboxModel", "CheckboxView");
        let (model, value) = open_watched(spec, Some(style), "value", value, fields);
        Checkbox { model, value }
    }

    pub fn set_value(&self, value: bool) {
        self.store(value);
    }
}

value_widget!(
    /// A one-line text box (`TextModel`); the value follows each keystroke.
    Text, String, "value"
);
displayable!(Text, |w| format!("Text(value={:?})", w.value()));

impl Text {
    pub fn new(value: &str) -> Self {
        let mut fields = described("");
        fields.extend([
            ("continuous_update", Value::from(true)),
            ("disabled", Value::from(false)),
            ("placeholder", Value::from("\u{200b}")),
        ]);
        let nulls = ["background", "font_size", "text_color"];
        let style = style("TextStyleModel", &nulls, true);
        let spec = Spec::controls("TextModel", "TextView");
        let (model, value) = open_watched(spec, Some(style), "value", value.to_owned(), fields);
        Text { model, value }
    }

    pub fn set_value(&self, value: &str) {
        self.store(value.to_owned());
    }

    /// Text shown while the box is empty.
    pub fn placeholder(self, text: &str) -> Self {
        self.model.set(vec![("placeholder", Value::from(text))]);
        self
    }
}

macro_rules! text_display {
    ($(#[$doc:meta])* $name:ident, $model:literal, $view:literal, $style:literal, $nulls:expr) => {
        value_widget!($(#[$doc])* $name, String, "value");
        displayable!($name, |w| format!("{}(value={:?})", stringify!($name), w.value()));

        impl $name {
            pub fn new(value: &str) -> Self {
                let mut fields = described("");
                fields.push(("placeholder", Value::from("\u{200b}")));
                let style = style($style, &$nulls, true);
                let spec = Spec::controls($model, $view);
                let (model, value) =
                    open_watched(spec, Some(style), "value", value.to_owned(), fields);
                $name { model, value }
            }

            pub fn set_value(&self, value: &str) {
                self.store(value.to_owned());
            }
        }
    };
}

/// The text fields of a style model, all null by default (a label's, a button's).
const TEXT_STYLE: [&str; 7] = [
    "font_family",
    "font_size",
    "font_style",
    "font_variant",
    "font_weight",
    "text_color",
    "text_decoration",
];

const LABEL_STYLE: [&str; 8] = with_text_style("background");

/// `first`, then [`TEXT_STYLE`].
pub(super) const fn with_text_style(first: &'static str) -> [&'static str; 8] {
    let mut all = [first; 8];
    let mut i = 0;
    while i < TEXT_STYLE.len() {
        all[i + 1] = TEXT_STYLE[i];
        i += 1;
    }
    all
}

text_display!(
    /// A line of plain text (`LabelModel`).
    Label, "LabelModel", "LabelView", "LabelStyleModel", LABEL_STYLE
);
text_display!(
    /// HTML markup, sanitised and rendered by the front end (`HTMLModel`).
    HTML, "HTMLModel", "HTMLView", "HTMLStyleModel", ["background", "font_size", "text_color"]
);
