//! Rich output: MIME bundles, `display`, in-place updates, `clear_output` and progress bars.

use crate::{json, link};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A MIME bundle: the same value in several representations; the frontend picks the richest it
/// can show. `text/plain` should always be present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MimeBundle {
    /// MIME type and JSON-encoded value, in insertion order.
    data: Vec<(String, String)>,
    metadata: Vec<(String, String)>,
}

impl MimeBundle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one textual representation (`"text/html"`, `"image/png"` as base64, ...).
    pub fn with(self, mime: &str, text: impl AsRef<str>) -> Self {
        self.with_json(mime, json::string(text.as_ref()))
    }

    /// Adds one representation given as JSON text (for `application/json` and friends).
    pub fn with_json(mut self, mime: &str, json_text: impl Into<String>) -> Self {
        self.data.retain(|(m, _)| m != mime);
        self.data.push((mime.to_owned(), json_text.into()));
        self
    }

    /// Adds display metadata for one MIME type as JSON text, e.g. `{"width": 200}`.
    pub fn with_metadata(mut self, mime: &str, json_text: impl Into<String>) -> Self {
        self.metadata.retain(|(m, _)| m != mime);
        self.metadata.push((mime.to_owned(), json_text.into()));
        self
    }

    /// The MIME types present, in order.
    pub fn mime_types(&self) -> impl Iterator<Item = &str> {
        self.data.iter().map(|(m, _)| m.as_str())
    }

    fn data_json(&self) -> String {
        json::object(self.data.iter().map(|(m, v)| (m.as_str(), v.clone())))
    }

    fn metadata_json(&self) -> String {
        json::object(self.metadata.iter().map(|(m, v)| (m.as_str(), v.clone())))
    }
}

/// Anything that can be shown richly in the notebook.
pub trait Rich {
    fn bundle(&self) -> MimeBundle;
}

impl Rich for MimeBundle {
    fn bundle(&self) -> MimeBundle {
        self.clone()
    }
}

impl<T: Rich + ?Sized> Rich for &T {
    fn bundle(&self) -> MimeBundle {
        (**self).bundle()
    }
}

macro_rules! mime_type {
    ($(#[$doc:meta])* $name:ident, $mime:expr, $plain:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(content: impl Into<String>) -> Self {
                $name(content.into())
            }

            /// Shows this value where it is called (evcxr's display convention).
            pub fn evcxr_display(&self) {
                emit_display(&self.bundle(), None);
            }
        }

        impl Rich for $name {
            fn bundle(&self) -> MimeBundle {
                let plain: fn(&str) -> String = $plain;
                MimeBundle::new()
                    .with("text/plain", plain(&self.0))
                    .with($mime, &self.0)
            }
        }
    };
}

mime_type!(
    /// HTML markup, rendered by the frontend.
    Html, "text/html", |_| "<HTML>".to_owned()
);
mime_type!(
    /// An SVG image (the markup as a string).
    Svg, "image/svg+xml", |_| "<SVG image>".to_owned()
);
mime_type!(
    /// Markdown text.
    Markdown, "text/markdown", |s| s.to_owned()
);
mime_type!(
    /// LaTeX, e.g. `Latex::new(r"$e^{i\pi} + 1 = 0$")`.
    Latex, "text/latex", |s| s.to_owned()
);
mime_type!(
    /// Plain text shown as is (no Debug quoting).
    Text, "text/plain", |s| s.to_owned()
);

/// A PNG image from its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Png(pub Vec<u8>);

/// A JPEG image from its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Jpeg(pub Vec<u8>);

impl Rich for Png {
    fn bundle(&self) -> MimeBundle {
        MimeBundle::new()
            .with("text/plain", format!("<PNG image, {} bytes>", self.0.len()))
            .with("image/png", base64(&self.0))
    }
}

impl Rich for Jpeg {
    fn bundle(&self) -> MimeBundle {
        MimeBundle::new()
            .with(
                "text/plain",
                format!("<JPEG image, {} bytes>", self.0.len()),
            )
            .with("image/jpeg", base64(&self.0))
    }
}

impl Png {
    pub fn evcxr_display(&self) {
        emit_display(&self.bundle(), None);
    }
}

impl Jpeg {
    pub fn evcxr_display(&self) {
        emit_display(&self.bundle(), None);
    }
}

/// JSON data given as JSON text (for example from `serde_json::to_string`), shown as an
/// interactive tree by JupyterLab.
#[derive(Debug, Clone, PartialEq)]
pub struct Json(pub String);

impl Json {
    pub fn new(json_text: impl Into<String>) -> Self {
        Json(json_text.into())
    }

    pub fn evcxr_display(&self) {
        emit_display(&self.bundle(), None);
    }
}

impl Rich for Json {
    fn bundle(&self) -> MimeBundle {
        MimeBundle::new()
            .with("text/plain", &self.0)
            .with_json("application/json", self.0.clone())
    }
}

static NEXT_DISPLAY: AtomicU64 = AtomicU64::new(1);

/// A display that can be replaced in place, from any cell or task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayHandle {
    id: String,
}

impl DisplayHandle {
    /// The frontend's `display_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces what this display shows, wherever it is.
    pub fn update(&self, value: &impl Rich) {
        let bundle = value.bundle();
        link::send(&json::object([
            ("t", json::string("update")),
            ("id", json::string(&self.id)),
            ("data", bundle.data_json()),
            ("metadata", bundle.metadata_json()),
        ]));
    }
}

/// Shows `value` under the running cell (from a task: under the cell that spawned it; from a
/// plain thread: under the running cell, else the most recent one) and returns a handle to
/// update it in place.
pub fn display(value: &impl Rich) -> DisplayHandle {
    let id = format!(
        "rustloop-{}-{}",
        std::process::id(),
        NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed)
    );
    emit_display(&value.bundle(), Some(&id));
    DisplayHandle { id }
}

pub(crate) fn emit_display(bundle: &MimeBundle, id: Option<&str>) {
    link::send(&json::object(
        [
            ("t", json::string("display")),
            ("id", json::opt_string(id)),
            ("data", bundle.data_json()),
            ("metadata", bundle.metadata_json()),
        ]
        .into_iter()
        .chain(crate::origin::field()),
    ));
}

/// Clears the cell's output. With `wait`, the frontend clears only when new output arrives,
/// which avoids flicker in animations.
pub fn clear_output(wait: bool) {
    link::send(&json::object(
        [("t", json::string("clear")), ("wait", wait.to_string())]
            .into_iter()
            .chain(crate::origin::field()),
    ));
}

/// A progress bar that redraws in place (one display, updated), usable from tasks.
#[derive(Debug)]
pub struct ProgressBar {
    handle: DisplayHandle,
    total: u64,
    current: u64,
    label: String,
    last_drawn: Option<(u64, Instant)>,
}

impl ProgressBar {
    /// A bar counting from 0 to `total`.
    pub fn new(total: u64) -> Self {
        Self::with_label(total, "")
    }

    pub fn with_label(total: u64, label: &str) -> Self {
        let mut bar = ProgressBar {
            handle: DisplayHandle { id: String::new() },
            total: total.max(1),
            current: 0,
            label: label.to_owned(),
            last_drawn: None,
        };
        bar.handle = display(&bar.render());
        bar.last_drawn = Some((0, Instant::now()));
        bar
    }

    /// Advances by `n`.
    pub fn inc(&mut self, n: u64) {
        self.set(self.current.saturating_add(n));
    }

    /// Sets the position. Redraws at most every 50 ms, and always at the end.
    pub fn set(&mut self, position: u64) {
        self.current = position.min(self.total);
        let due = match self.last_drawn {
            Some((drawn, at)) => {
                self.current == self.total
                    || (self.current != drawn && at.elapsed() >= Duration::from_millis(50))
            }
            None => true,
        };
        if due {
            self.redraw();
        }
    }

    /// Draws the final state.
    pub fn finish(&mut self) {
        self.current = self.total;
        self.redraw();
    }

    pub fn position(&self) -> u64 {
        self.current
    }

    fn redraw(&mut self) {
        self.handle.update(&self.render());
        self.last_drawn = Some((self.current, Instant::now()));
    }

    fn render(&self) -> MimeBundle {
        let fraction = self.current as f64 / self.total as f64;
        let filled = (fraction * 30.0).round() as usize;
        let text = format!(
            "{}{}[{}{}] {}/{} ({:.0}%)",
            self.label,
            if self.label.is_empty() { "" } else { " " },
            "#".repeat(filled),
            "-".repeat(30 - filled),
            self.current,
            self.total,
            fraction * 100.0
        );
        let html = format!(
            "<div style=\"display:flex;align-items:center;gap:8px;font-family:monospace\">\
             <span>{}</span><progress value=\"{}\" max=\"{}\" style=\"width:240px\"></progress>\
             <span>{}/{} ({:.0}%)</span></div>",
            escape_html(&self.label),
            self.current,
            self.total,
            self.current,
            self.total,
            fraction * 100.0
        );
        MimeBundle::new()
            .with("text/plain", text)
            .with("text/html", html)
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(TABLE[(n >> 18) as usize & 63] as char);
        out.push(TABLE[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            TABLE[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            TABLE[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn html_bundle_has_plain_fallback() {
        let bundle = Html::new("<b>x</b>").bundle();
        assert_eq!(
            bundle.mime_types().collect::<Vec<_>>(),
            ["text/plain", "text/html"]
        );
        assert_eq!(
            bundle.data_json(),
            r#"{"text/plain":"<HTML>","text/html":"<b>x</b>"}"#
        );
    }
}
