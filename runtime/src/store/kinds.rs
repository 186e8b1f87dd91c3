//! Which kind a kept value is, decided when the defining cell compiles: a future, an iterator
//! or a closure gets a *boxer* to its trait-object form (`Pin<Box<dyn Future<Output = T> +
//! Send>>`, `Box<dyn Iterator<Item = T>>`, `Box<dyn FnMut(A) -> R>`), which a later cell uses
//! when the value's own type cannot be written. rustloop generates `(&&&&&&&&Keep(&x)).boxer()`
//! with these traits in scope (a glob import of this module): autoref specialisation picks the
//! first trait, from the most references down, whose bounds the type meets.

use super::{Boxer, Keep};
use std::future::Future;
use std::pin::Pin;

// Only the kind traits are public here: cells glob-import this module inside their own block,
// where any other name would shadow a user's item of the same name.

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
