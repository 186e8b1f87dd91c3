//! Jupyter widgets from Rust: sliders, buttons, text boxes and an output area that speak the
//! Jupyter widget protocol 2.x (`@jupyter-widgets/base` 2, `@jupyter-widgets/controls` 2,
//! ipywidgets 8's front ends), so JupyterLab, Notebook 7 and VS Code render them.
//!
//! Every widget is a cheap, cloneable handle (`Send + Sync`, usable from any task):
//! - `.value()` reads, `.set_value(v)` writes (here and in every view), `.watch()` gives a
//!   [`tokio::sync::watch::Receiver`] that wakes on each change, from the front end or code;
//! - show it as a cell's value or with [`crate::display`];
//! - when the last handle is dropped the widget's comm closes and its views go away (keep it
//!   in a variable: variables live across cells and interrupts).
//!
//! [`Button::clicks`] is a stream of clicks; [`Output`] is an area tasks can print into;
//! [`interact`] re-runs a closure whenever one of its widgets changes.
//!
//! ```ignore
//! use rustloop::widgets::*;
//! let rate = IntSlider::new(5, 1, 20).description("per second");
//! rate
//! // in a later cell:
//! let mut changes = rate.watch();
//! changes.changed().await.unwrap();
//! println!("now {}", rate.value());
//! ```

pub use choices::{Button, Clicks, Dropdown};
pub use containers::{HBox, Output, VBox};
pub use controls::{Checkbox, FloatSlider, HTML, IntProgress, IntSlider, Label, Text};

pub(crate) use model::open_control;

use crate::display::MimeBundle;
use crate::json;

/// Anything shown as a widget: it has a model in the front end.
pub trait Widget {
    /// The model's id (its comm id).
    fn model_id(&self) -> &str;
    #[doc(hidden)]
    fn __model(&self) -> &model::Model;
}

/// The display bundle of a widget: the view MIME type plus a text fallback.
fn view_bundle(model_id: &str, plain: String) -> MimeBundle {
    MimeBundle::new().with("text/plain", plain).with_json(
        "application/vnd.jupyter.widget-view+json",
        json::object([
            ("model_id", json::string(model_id)),
            ("version_major", "2".to_owned()),
            ("version_minor", "0".to_owned()),
        ]),
    )
}

/// Runs `f` now on the notebook runtime, then again whenever any of `widgets` changes (from
/// the front end or from code); changes that arrive while `f` runs cause one more run. The
/// returned task runs until aborted (or until every widget is gone and `f` holds none).
pub fn interact(
    widgets: &[&dyn Widget],
    mut f: impl FnMut() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for widget in widgets {
        let mut changes = widget.__model().listen();
        let tx = tx.clone();
        crate::handle().spawn(async move {
            while changes.recv().await.is_some() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    crate::handle().spawn(async move {
        f();
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            f();
        }
    })
}

/// Shows a widget type as its view (the text form where views cannot be shown, e.g. in
/// `jupyter console`).
macro_rules! displayable {
    ($name:ident, |$w:ident| $plain:expr) => {
        impl crate::widgets::Widget for $name {
            fn model_id(&self) -> &str {
                self.model.id()
            }
            fn __model(&self) -> &crate::widgets::model::Model {
                &self.model
            }
        }

        impl crate::display::Rich for $name {
            fn bundle(&self) -> crate::display::MimeBundle {
                let $w = self;
                crate::widgets::view_bundle(self.model.id(), $plain)
            }
        }

        impl $name {
            /// Shows the widget where it is called (evcxr's display convention; a cell's
            /// final value goes through it).
            pub fn evcxr_display(&self) {
                crate::display::emit_display(&crate::display::Rich::bundle(self), None);
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $w = self;
                f.write_str(&$plain)
            }
        }
    };
}

mod choices;
mod containers;
mod controls;
mod model;
