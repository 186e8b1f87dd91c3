//! The rustloop runtime: the crate every notebook cell links against.
//!
//! rustloop compiles each cell into its own shared object. This crate is built once as a Rust
//! `dylib`, so every cell shares one copy of it and of tokio, and therefore one tokio runtime
//! that exists before the first cell runs and lives until the kernel shuts down.
//!
//! What a notebook user sees of it:
//! - top-level `.await` (rustloop rewrites `x.await` outside async code into a wait on the shared
//!   runtime that an interrupt can cancel);
//! - [`display`], [`DisplayHandle::update`], [`clear_output`] and the MIME types [`Html`],
//!   [`Svg`], [`Png`], [`Jpeg`], [`Json`], [`Markdown`], [`Latex`], [`Text`], [`MimeBundle`];
//! - [`ProgressBar`], a bar that redraws in place;
//! - [`input`] and [`input_password`];
//! - [`handle`] to reach the runtime from plain threads, and `:tasks` to list live tasks;
//! - [`widgets`] (sliders, buttons, text, an output area, ... over Jupyter's widget protocol)
//!   and the [`comm`] channels they are built on.
//!
//! Everything the runtime sends to the kernel travels through the process's stdout as framed
//! messages, so it stays in order with `println!` output.

// Per-task output capture (see `origin`); enabled only when rustloop's rustc wrapper builds
// this crate.
#![cfg_attr(rustloop_capture, feature(internal_output_capture))]
#![cfg_attr(rustloop_capture, allow(internal_features))]

pub mod comm;
mod display;
mod json;
mod link;
mod origin;
mod tasks;
pub mod widgets;

#[doc(hidden)]
#[path = "store/mod.rs"]
pub mod __store;

pub use display::{
    DisplayHandle, Html, Jpeg, Json, Latex, Markdown, MimeBundle, Png, ProgressBar, Rich, Svg,
    Text, clear_output, display,
};
pub use tasks::TaskInfo;
pub use tokio;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static MAIN_THREAD: OnceLock<std::thread::ThreadId> = OnceLock::new();
/// Number of the cell run currently executing on the evaluation thread (0: none yet).
static CURRENT_RUN: AtomicU64 = AtomicU64::new(0);

/// The shared runtime, created on first use.
fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("rustloop-worker");
        tasks::install_hooks(&mut builder);
        let rt = builder
            .build()
            .expect("rustloop: cannot start the tokio runtime");
        comm::register_target("jupyter.widget.control", widgets::open_control);
        link::start();
        install_panic_hook();
        rt
    })
}

/// A handle to the notebook's tokio runtime, usable from any thread.
pub fn handle() -> tokio::runtime::Handle {
    runtime().handle().clone()
}

/// Called by the evaluation process on its main thread before each cell runs.
#[doc(hidden)]
#[unsafe(no_mangle)]
pub extern "C" fn rustloop_runtime_cell_begin(run: u64) {
    let rt = runtime();
    if MAIN_THREAD.set(std::thread::current().id()).is_ok() {
        // Enter the runtime once, for good: `tokio::spawn`, `Handle::current()` and timers then
        // work in every cell, with or without `.await`.
        std::mem::forget(rt.enter());
    }
    CURRENT_RUN.store(run, Ordering::SeqCst);
}

/// Called by the evaluation process after each cell returns: flush what the cell printed so it
/// reaches the notebook before the cell is reported finished.
#[doc(hidden)]
#[unsafe(no_mangle)]
pub extern "C" fn rustloop_runtime_cell_end(_run: u64) {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

pub(crate) fn current_run() -> u64 {
    CURRENT_RUN.load(Ordering::SeqCst)
}

pub(crate) fn on_main_thread() -> bool {
    MAIN_THREAD.get() == Some(&std::thread::current().id())
}

/// The panic payload that ends a cell interrupted while waiting at `.await`.
#[derive(Debug)]
pub struct KeyboardInterrupt;

/// Top-level `.await`: waits for `future` on the shared runtime. If the kernel is asked to
/// interrupt this cell, the future is dropped (cancelled) and the cell unwinds with
/// [`KeyboardInterrupt`]; variables defined by earlier cells are kept.
#[doc(hidden)]
pub fn __await<F: Future>(future: F) -> F::Output {
    let rt = runtime();
    let run = current_run();
    let mut interrupts = link::interrupts();
    let outcome = rt.block_on(async move {
        tokio::select! {
            biased;
            _ = interrupts.wait_for(|&interrupted| interrupted == run) => None,
            value = future => Some(value),
        }
    });
    match outcome {
        Some(value) => value,
        None => {
            link::send(r#"{"t":"interrupted"}"#);
            std::panic::resume_unwind(Box::new(KeyboardInterrupt))
        }
    }
}

/// Marks the start of the cell's final value: what is displayed until [`__result_end`] becomes
/// the cell's `execute_result`.
#[doc(hidden)]
pub fn __result_begin() {
    link::send(r#"{"t":"result_begin"}"#);
}

#[doc(hidden)]
pub fn __result_end() {
    link::send(r#"{"t":"result_end"}"#);
}

/// How a cell's final expression is shown. rustloop rewrites a final expression `e` into
/// `(&(e)).evcxr_display()` with these traits in scope, so method resolution picks, in order:
/// an inherent `evcxr_display(&self)` (evcxr's convention), then [`Rich`], then `Debug`.
#[doc(hidden)]
pub mod __private {
    use crate::display::{Rich, emit_display};

    /// `!` spelled so stable Rust accepts it in a type: rust-analyzer infers `!` for values such
    /// as the handle of a task that never returns, and evcxr writes that type out to keep the
    /// variable between cells. rustloop rewrites those `!` to `Never`.
    pub type Never = <fn() -> ! as HasOutput>::Output;

    pub trait HasOutput {
        type Output;
    }

    impl<T> HasOutput for fn() -> T {
        type Output = T;
    }

    pub trait RichResult {
        fn evcxr_display(&self);
    }

    impl<T: Rich + ?Sized> RichResult for T {
        fn evcxr_display(&self) {
            emit_display(&self.bundle(), None);
        }
    }

    pub trait DebugResult {
        fn evcxr_display(&self);
    }

    impl<T: std::fmt::Debug + ?Sized> DebugResult for &T {
        #[inline]
        fn evcxr_display(&self) {
            show_debug(self, std::any::type_name::<T>());
        }
    }

    /// The work of [`DebugResult`], compiled once here rather than in every cell (a cell
    /// compiles only the vtable of its value's `Debug`).
    #[inline(never)]
    pub fn show_debug(value: &dyn std::fmt::Debug, type_name: &str) {
        // `()` is what statements evaluate to: show nothing, like Python's None.
        if type_name == "()" {
            return;
        }
        let text = format!("{value:?}");
        emit_display(&crate::MimeBundle::new().with("text/plain", text), None);
    }
}

/// Reads a line typed by the notebook user (an `input_request` on the stdin channel).
///
/// Returns an error when the client does not accept input (for example `jupyter nbconvert`,
/// which sends `allow_stdin: false`) or when no cell is running.
pub fn input(prompt: &str) -> std::io::Result<String> {
    link::input(prompt, false)
}

/// Like [`input`], but the frontend hides what is typed.
pub fn input_password(prompt: &str) -> std::io::Result<String> {
    link::input(prompt, true)
}

/// Live tasks spawned on the notebook runtime, oldest first.
pub fn tasks() -> Vec<TaskInfo> {
    tasks::live()
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let task = tokio::task::try_id().map(|id| id.to_string());
        let run = task.as_ref().and_then(|_| tasks::origin_of_current());
        link::send(&json::object([
            ("t", json::string("panic")),
            ("main", on_main_thread().to_string()),
            ("thread", json::string(thread.name().unwrap_or("<unnamed>"))),
            ("message", json::string(&message)),
            ("location", json::string(&location)),
            ("task", json::opt_string(task.as_deref())),
            ("run", run.map_or("null".to_owned(), |r| r.to_string())),
        ]));
    }));
}
