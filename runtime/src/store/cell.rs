//! How a cell's statements end, in code compiled once here rather than in every cell: a panic
//! caught around statements that load no variable ([`run`]), evcxr told of a caught panic
//! ([`panicked`]), and the error of a top-level `?` ([`CellError`]).

use std::any::Any;

/// Ends a cell whose statements panicked (the panic was caught in the cell, after which the
/// variables it had loaded were kept again): drops the payload and tells evcxr, which
/// reports the panic the runtime's hook recorded.
#[doc(hidden)]
#[inline(never)]
pub fn panicked(payload: Box<dyn Any + Send>) {
    drop(payload);
    println!("EVCXR_PANIC_NOTIFICATION");
}

/// Runs the statements of a cell that loads no earlier variable, catching a panic: then the
/// closure captures nothing and can be called through `&mut dyn FnMut`, and the
/// `catch_unwind` is compiled once, here, instead of in every cell (about 1.5 ms of each
/// cell's compile). A panic ends in [`panicked`], or unwinds on for the fast lane's crate (`lane`),
/// which catches it around the whole cell. A cell that loads variables keeps its own
/// `catch_unwind` around a closure that may move them.
#[doc(hidden)]
#[inline(never)]
pub fn run(lane: bool, statements: &mut dyn FnMut()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(statements)) {
        match lane {
            true => std::panic::resume_unwind(payload),
            false => panicked(payload),
        }
    }
}

/// [`run`] for a cell whose top level uses `?`: its error was shown when it became a
/// [`CellError`].
#[doc(hidden)]
#[inline(never)]
pub fn run_fallible(lane: bool, statements: &mut dyn FnMut() -> Result<(), CellError>) {
    run(lane, &mut || {
        let _ = statements();
    })
}

/// What a cell returns when its top level uses `?`: the error was shown (with `Display`, as
/// evcxr does) and the evaluation process was told.
#[doc(hidden)]
pub struct CellError(());

impl<E: std::fmt::Display> From<E> for CellError {
    fn from(error: E) -> Self {
        eprintln!("{error}");
        println!("EVCXR_ERROR_OCCURRED");
        CellError(())
    }
}
