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

mod cell;
pub mod kinds;

pub use cell::{CellError, panicked, run, run_fallible};

use std::any::Any;
use std::collections::HashMap;
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
///
/// Every cell that keeps a variable compiles its own copy of this function, so it only moves
/// the value into memory from [`alloc_for`] and names its `Any` vtable; the allocation, the
/// `Box` and the store's work are in this library, compiled once. (`Box::new` in the cell
/// instantiated the allocator's inline path there: about 2 ms of each such cell's compile.)
#[doc(hidden)]
#[inline]
pub fn keep<T: 'static>(name: &str, value: T, boxer: Option<Boxer>) {
    let place = alloc_for(&value) as *mut T;
    // SAFETY: `place` is memory for a `T`; `keep_raw` owns it and the value from here on.
    unsafe {
        place.write(value);
        keep_raw(name, place, boxer);
    }
}

/// Memory with the size and alignment of `value`, from the global allocator (a dangling,
/// aligned address for a zero-sized value), as a `Box` of it would have.
#[doc(hidden)]
#[inline(never)]
pub fn alloc_for(value: &dyn Any) -> *mut u8 {
    let layout = std::alloc::Layout::for_value(value);
    if layout.size() == 0 {
        return std::ptr::without_provenance_mut(layout.align());
    }
    // SAFETY: the size is not zero.
    let place = unsafe { std::alloc::alloc(layout) };
    if place.is_null() {
        std::alloc::handle_alloc_error(layout)
    }
    place
}

/// [`keep`]'s part compiled once: the value a cell moved into memory from [`alloc_for`] goes
/// into the store as a box.
///
/// # Safety
/// `value` points to an initialised value in memory [`alloc_for`] returned for a value of its
/// type, and nothing else owns it.
#[doc(hidden)]
#[inline(never)]
pub unsafe fn keep_raw(name: &str, value: *mut dyn Any, boxer: Option<Boxer>) {
    // SAFETY: allocated by the global allocator with the value's layout (dangling for a
    // zero-sized value), which is what `Box` needs; the caller gives up the value.
    let value = unsafe { Box::from_raw(value) };
    let layout = std::alloc::Layout::for_value(&*value);
    let entry = Entry {
        value,
        boxer,
        layout,
    };
    let old = with(|s| s.insert(name.to_owned(), entry));
    // Dropped outside the lock: a value's destructor may run arbitrary code.
    drop(old);
}

/// Takes the value kept under `name` as a `T`.
///
/// # Panics
/// If there is none, or it is not a `T`: its type was redefined since it was kept. The value is
/// then dropped (never read as the new type) and the panic says so.
#[doc(hidden)]
#[inline]
pub fn take<T: 'static>(name: &str) -> T {
    match take_erased(name).downcast::<T>() {
        Ok(value) => *value,
        Err(value) => redefined(name, value, std::any::type_name::<T>()),
    }
}

/// Removes the value kept under `name`.
///
/// # Panics
/// If there is none.
#[doc(hidden)]
#[inline(never)]
pub fn take_erased(name: &str) -> Box<dyn Any> {
    take_entry(name).value
}

fn take_entry(name: &str) -> Entry {
    let entry = with(|s| s.remove(name))
        .unwrap_or_else(|| panic!("rustloop: the variable `{name}` is no longer kept"));
    TAKEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(name.to_owned(), entry.boxer);
    entry
}

/// The boxers of values cells have taken, for [`keep_loaded`].
static TAKEN: Mutex<Option<HashMap<String, Option<Boxer>>>> = Mutex::new(None);

/// Keeps a value the cell took (under the same name and type) again, with the boxer it had:
/// its kind is known, so the cell does not dispatch on it again.
#[doc(hidden)]
#[inline]
pub fn keep_loaded<T: 'static>(name: &str, value: T) {
    let place = alloc_for(&value) as *mut T;
    // SAFETY: as in `keep`.
    unsafe {
        place.write(value);
        keep_loaded_raw(name, place);
    }
}

/// [`keep_loaded`]'s part compiled once: [`keep_raw`] with the boxer the value had.
///
/// # Safety
/// As for [`keep_raw`].
#[doc(hidden)]
#[inline(never)]
pub unsafe fn keep_loaded_raw(name: &str, value: *mut dyn Any) {
    let boxer = TAKEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|taken| taken.remove(name))
        .flatten();
    // SAFETY: the caller's promise.
    unsafe { keep_raw(name, value, boxer) }
}

/// Drops a value taken out under the wrong type and says why (see [`take`]).
#[doc(hidden)]
#[inline(never)]
#[cold]
pub fn redefined(name: &str, value: Box<dyn Any>, type_name: &str) -> ! {
    drop(value);
    panic!(
        "{REDEFINED_PREFIX}`{name}` was dropped: its type `{type_name}` was redefined since the \
         value was made, and rustloop never reads a value as another type"
    )
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
    let entry = take_entry(name);
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

/// How a cell will take a kept variable: as its own type, as its trait-object form (after
/// [`take_boxed`]'s boxing), or retagged ([`take_retagged`]).
#[doc(hidden)]
pub struct Load {
    id: std::any::TypeId,
    layout: std::alloc::Layout,
    type_name: &'static str,
    boxed: bool,
    retagged: bool,
}

impl Load {
    #[doc(hidden)]
    pub fn own<T: 'static>() -> Load {
        Load::new::<T>(false, false)
    }
    #[doc(hidden)]
    pub fn boxed<B: 'static>() -> Load {
        Load::new::<B>(true, false)
    }
    #[doc(hidden)]
    pub fn retagged<T: 'static>(boxed: bool) -> Load {
        Load::new::<T>(boxed, true)
    }
    fn new<T: 'static>(boxed: bool, retagged: bool) -> Load {
        Load {
            id: std::any::TypeId::of::<T>(),
            layout: std::alloc::Layout::new::<T>(),
            type_name: std::any::type_name::<T>(),
            boxed,
            retagged,
        }
    }
}

/// Checks, before a cell takes anything, that each of its loads will succeed: then no take
/// panics, which matters because the takes run outside the cell's `catch_unwind` (so that the
/// values outlive a panic of the cell's statements). When one would fail, nothing is taken, the
/// failing value is dropped (never read as another type) and the panic is reported as it would
/// have been by the take: through the panic hook and evcxr's panic line. The cell then skips
/// its statements.
#[doc(hidden)]
#[inline(never)]
pub fn loadable(loads: &[(&str, Load)]) -> bool {
    let failure = loads.iter().find_map(|(name, load)| {
        if load.boxed {
            box_in_place(name);
        }
        let failure = with(|s| match s.get(*name) {
            None => Some(format!("rustloop: the variable `{name}` is no longer kept")),
            Some(entry) if (*entry.value).type_id() == load.id => None,
            Some(entry) if load.retagged && entry.layout == load.layout => None,
            Some(_) if load.retagged => Some(format!(
                "{REDEFINED_PREFIX}`{name}` was dropped: its layout changed since it was made"
            )),
            Some(_) => Some(format!(
                "{REDEFINED_PREFIX}`{name}` was dropped: its type `{}` was redefined since the \
                 value was made, and rustloop never reads a value as another type",
                load.type_name
            )),
        })?;
        forget(&[name]);
        Some(failure)
    });
    let Some(message) = failure else {
        return true;
    };
    // Raised and caught here, so that the hook reports it like any panic of a cell.
    let _ = std::panic::catch_unwind(|| std::panic::panic_any(message));
    println!("EVCXR_PANIC_NOTIFICATION");
    false
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

/// Wraps a borrowed value for kind dispatch (see [`kinds`]).
#[doc(hidden)]
pub struct Keep<T>(pub T);

/// rustloop's type probe: a bound no type meets, so rustc names the type in its error.
#[doc(hidden)]
pub trait Probe {}

#[doc(hidden)]
pub fn probe<T: Probe + ?Sized>(_: &T) {}

#[cfg(test)]
// The references are the dispatch (autoref specialisation), not redundant borrows.
#[allow(clippy::needless_borrow)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

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
    fn kept_values_are_moved_once_and_dropped_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted(u64, [u8; 3]);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        keep("counted_t", Counted(7, [1, 2, 3]), None);
        assert_eq!(DROPS.load(Ordering::SeqCst), 0, "keeping moved the value");
        let back = take::<Counted>("counted_t");
        assert_eq!((back.0, back.1), (7, [1, 2, 3]));
        keep_loaded("counted_t", back);
        keep("counted_t", Counted(8, [0; 3]), None);
        assert_eq!(
            DROPS.load(Ordering::SeqCst),
            1,
            "the replaced value was dropped"
        );
        forget(&["counted_t"]);
        assert_eq!(DROPS.load(Ordering::SeqCst), 2);
        // Zero-sized values and over-aligned ones.
        #[derive(Debug, PartialEq)]
        struct Unit;
        #[repr(align(64))]
        #[derive(Debug, PartialEq)]
        struct Wide(u8);
        keep("unit_t", Unit, None);
        keep("wide_t", Wide(9), None);
        assert_eq!(take::<Unit>("unit_t"), Unit);
        assert_eq!(take::<Wide>("wide_t"), Wide(9));
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
