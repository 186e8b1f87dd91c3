//! The variable store: values kept between cells, owned by rustloop rather than by evcxr.
//!
//! A cell's top-level `let`s end in [`keep`]: the value goes in type-erased (`Box<dyn Any>`,
//! which carries its `TypeId`), together with a *boxer* when the value is a future, an iterator
//! or a closure. A later cell that uses the variable takes it back out with [`take`] under the
//! type rustloop spelled for it (rustc's own spelling, found after the defining cell compiled),
//! or with [`take_boxed`] as a trait object (`Pin<Box<dyn Future<Output = T> + Send>>`,
//! `Box<dyn Iterator<Item = T>>`, `Box<dyn FnMut(A) -> R>`) when its own type cannot be written.
//! Either way the `TypeId` is checked: a value is never read as another type.
//!
//! Which kind a value is (and so its boxer) is decided at compile time in the defining cell by
//! autoref specialisation (see [`kinds`]): the most specific of the `Kind*` traits
//! whose bounds the type meets wins.
//!
//! Cells run one at a time on the evaluation thread; only they touch the store.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// Turns a kept value into its trait-object form (both type-erased).
pub type Boxer = fn(Box<dyn Any>) -> Box<dyn Any>;

struct Entry {
    value: Box<dyn Any>,
    boxer: Option<Boxer>,
    /// Size and alignment of the value's type, checked again before a retagged read.
    layout: std::alloc::Layout,
}

struct Store(HashMap<String, Entry>);
// SAFETY: the values are only created, read and dropped by cells, which run one at a time on
// the evaluation thread (never from tasks or other threads).
unsafe impl Send for Store {}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
    let mut guard = STORE.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard.get_or_insert_with(|| Store(HashMap::new())).0)
}

/// Keeps `value` under `name`, replacing what was there.
#[doc(hidden)]
pub fn keep<T: 'static>(name: &str, value: T, boxer: Option<Boxer>) {
    let old = with(|s| {
        s.insert(
            name.to_owned(),
            Entry {
                value: Box::new(value),
                boxer,
                layout: std::alloc::Layout::new::<T>(),
            },
        )
    });
    // Dropped outside the lock: a value's destructor may run arbitrary code.
    drop(old);
}

/// Takes the value kept under `name` as a `T`.
///
/// # Panics
/// If there is none, or it is not a `T`: its type was redefined since it was kept. The value is
/// then dropped (never read as the new type) and the panic says so.
#[doc(hidden)]
pub fn take<T: 'static>(name: &str) -> T {
    let entry = with(|s| s.remove(name))
        .unwrap_or_else(|| panic!("rustloop: the variable `{name}` is no longer kept"));
    match entry.value.downcast::<T>() {
        Ok(value) => *value,
        Err(value) => {
            drop(value);
            panic!(
                "{REDEFINED_PREFIX}`{name}` was dropped: its type `{}` was redefined since the \
                 value was made, and rustloop never reads a value as another type",
                std::any::type_name::<T>()
            )
        }
    }
}

/// How the panic of [`take`] for a redefined type starts (the engine forgets the variable).
pub const REDEFINED_PREFIX: &str = "rustloop: the variable ";

/// Takes the value kept under `name` in its trait-object form `B`.
#[doc(hidden)]
pub fn take_boxed<B: 'static>(name: &str) -> B {
    box_in_place(name);
    take(name)
}

/// Replaces the value kept under `name` by its trait-object form, if it has one.
fn box_in_place(name: &str) {
    let Some(entry) = with(|s| {
        let boxer = s.get(name)?.boxer?;
        let entry = s.remove(name)?;
        Some((entry, boxer))
    }) else {
        return;
    };
    let (entry, boxer) = entry;
    let value = boxer(entry.value);
    with(|s| {
        s.insert(
            name.to_owned(),
            Entry {
                value,
                boxer: None,
                // A `Box` or a `Pin<Box<..>>` of a trait object.
                layout: std::alloc::Layout::new::<Box<dyn Any>>(),
            },
        )
    });
}

/// Takes a value kept before the cell crate's types were renumbered (a type was redefined, or
/// the value was made by a fast-lane cell): its `TypeId` is the old one, so it is read as `T`
/// without that check.
///
/// # Safety
/// `T` must be the type the value was made with, spelled again, and no type it involves may
/// have been defined differently since (rustloop checks the definitions before it generates
/// this call). Size and alignment are checked here as well.
#[doc(hidden)]
pub unsafe fn take_retagged<T: 'static>(name: &str, boxed: bool) -> T {
    if boxed {
        box_in_place(name);
    }
    let entry = with(|s| s.remove(name))
        .unwrap_or_else(|| panic!("rustloop: the variable `{name}` is no longer kept"));
    if entry.value.is::<T>() {
        return *entry.value.downcast::<T>().expect("checked");
    }
    if entry.layout != std::alloc::Layout::new::<T>() {
        drop(entry);
        panic!("{REDEFINED_PREFIX}`{name}` was dropped: its layout changed since it was made");
    }
    // SAFETY: the caller guarantees the value is a `T` under an older `TypeId`; the layout is
    // the same, so the allocation is freed with the layout it was made with.
    unsafe { *Box::from_raw(Box::into_raw(entry.value) as *mut T) }
}

/// Forgets the variables named (dropping their values), e.g. when their type was redefined.
#[doc(hidden)]
pub fn forget(names: &[&str]) {
    let old: Vec<_> = with(|s| names.iter().filter_map(|n| s.remove(*n)).collect());
    drop(old);
}

/// Names of the kept variables, sorted.
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = with(|s| s.keys().cloned().collect());
    names.sort();
    names
}

/// Wraps a borrowed value for kind dispatch; see [`kinds`].
#[doc(hidden)]
pub struct Keep<T>(pub T);

/// The kind traits, for a glob import where rustloop generates
/// `(&&&&&&&&Keep(&x)).boxer()`: autoref specialisation picks the first trait (from the most
/// references down) whose bounds `x`'s type meets, and so the most specific kind's boxer.
#[doc(hidden)]
pub mod kinds {
    pub use super::{
        KindFn0, KindFn1, KindFn2, KindFn3, KindFn4, KindFuture, KindIter, KindPlain,
        KindSendFuture, KindSendIter,
    };
}

/// rustloop's type probe: a bound no type meets, so rustc names the type in its error.
#[doc(hidden)]
pub trait Probe {}

#[doc(hidden)]
pub fn probe<T: Probe + ?Sized>(_: &T) {}

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

macro_rules! kind {
    ($trait:ident [$($p:ident),*] for [$($refs:tt)+] {$($bound:tt)+} $boxed:ty, |$v:ident| $make:expr) => {
        #[doc(hidden)]
        pub trait $trait<$($p),*> {
            type Boxed;
            fn boxer(&self) -> Option<Boxer>;
            fn boxed_form(&self) -> Self::Boxed {
                unreachable!("only named in rustloop's type probe, never run")
            }
        }
        impl<'a, X: $($bound)+ + 'static, $($p: 'static),*> $trait<$($p),*> for $($refs)+Keep<&'a X> {
            type Boxed = $boxed;
            fn boxer(&self) -> Option<Boxer> {
                Some(|value| {
                    let $v: X = *value.downcast::<X>().expect("a boxer gets its own type");
                    let boxed: $boxed = $make;
                    Box::new(boxed)
                })
            }
        }
    };
}

kind!(KindSendFuture [O] for [&&&&&&&] {Future<Output = O> + Send} Pin<Box<dyn Future<Output = O> + Send>>, |v| Box::pin(v));
kind!(KindFuture [O] for [&&&&&&] {Future<Output = O>} Pin<Box<dyn Future<Output = O>>>, |v| Box::pin(v));
kind!(KindSendIter [I] for [&&&&&] {Iterator<Item = I> + Send} Box<dyn Iterator<Item = I> + Send>, |v| Box::new(v));
kind!(KindIter [I] for [&&&&] {Iterator<Item = I>} Box<dyn Iterator<Item = I>>, |v| Box::new(v));
// Whether a closure is `Fn`, `FnMut` or `FnOnce` is only known once its whole cell is type
// checked, too late for dispatch; `FnMut` serves every closure that can be called twice.
kind!(KindFn0 [R] for [&&&] {FnMut() -> R} Box<dyn FnMut() -> R>, |v| Box::new(v));
kind!(KindFn1 [A, R] for [&&&] {FnMut(A) -> R} Box<dyn FnMut(A) -> R>, |v| Box::new(v));
kind!(KindFn2 [A, B, R] for [&&&] {FnMut(A, B) -> R} Box<dyn FnMut(A, B) -> R>, |v| Box::new(v));
kind!(KindFn3 [A, B, C, R] for [&&&] {FnMut(A, B, C) -> R}
    Box<dyn FnMut(A, B, C) -> R>, |v| Box::new(v));
kind!(KindFn4 [A, B, C, D, R] for [&&&] {FnMut(A, B, C, D) -> R}
    Box<dyn FnMut(A, B, C, D) -> R>, |v| Box::new(v));

#[doc(hidden)]
pub trait KindPlain {
    fn boxer(&self) -> Option<Boxer> {
        None
    }
    fn boxed_form(&self) {}
}
impl<X> KindPlain for &Keep<&X> {}

#[cfg(test)]
// The references are the dispatch (autoref specialisation), not redundant borrows.
#[allow(clippy::needless_borrow)]
mod tests {
    use super::*;

    async fn answer() -> u32 {
        42
    }

    fn keep_test<T: 'static>(name: &str, value: T) {
        use kinds::*;
        let b = (&&&&&&&&Keep(&value)).boxer();
        keep(name, value, b);
    }

    #[test]
    fn values_round_trip_under_their_type_only() {
        let v = vec![1, 2, 3];
        keep_test("v", v);
        assert_eq!(take::<Vec<i32>>("v"), vec![1, 2, 3]);
        keep_test("v", vec![4]);
        let wrong = std::panic::catch_unwind(|| take::<String>("v"));
        assert!(wrong.is_err(), "read as another type");
        assert!(
            !names().contains(&"v".to_owned()),
            "a mistyped value is dropped"
        );
    }

    #[test]
    fn futures_closures_and_iterators_come_back_boxed() {
        let f_t = answer();
        let add_t = |a: i32, b: i32| a + b;
        let it_t = vec![1, 2].into_iter().map(|x| x * 2);
        let plain_t = 5u8;
        {
            use kinds::*;
            let b = (&&&&&&&&Keep(&f_t)).boxer();
            keep("f_t", f_t, b);
            let b = (&&&&&&&&Keep(&add_t)).boxer();
            keep("add_t", add_t, b);
            let b = (&&&&&&&&Keep(&it_t)).boxer();
            keep("it_t", it_t, b);
            let b = (&&&&&&&&Keep(&plain_t)).boxer();
            keep("plain_t", plain_t, b);
        }
        let f: Pin<Box<dyn Future<Output = u32> + Send>> = take_boxed("f_t");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(f), 42);
        let mut add: Box<dyn FnMut(i32, i32) -> i32> = take_boxed("add_t");
        assert_eq!(add(2, 3), 5);
        let it: Box<dyn Iterator<Item = i32> + Send> = take_boxed("it_t");
        assert_eq!(it.collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(take::<u8>("plain_t"), 5);
    }
}
