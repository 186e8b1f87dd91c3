//! Randomised property tests (a fuzz harness on stable Rust) for what arrives from the network:
//! the ZMTP framing (the patched zeromq decoder, fed byte streams in random chunks) and the
//! Jupyter message codec with replay protection.
//!
//! Each target runs for `RUSTLOOP_FUZZ_SECS` seconds (default 2; `tests/run` runs them for a
//! minute) from the seed `RUSTLOOP_FUZZ_SEED` (default: the clock). A failure names the seed
//! and iteration, so `RUSTLOOP_FUZZ_SEED=<seed> cargo test --release fuzz_` reproduces it.
//!
//! Properties, for any input:
//! - ZMTP: no panic, no abort; a frame or message over the limit is an error, never a message;
//!   a well-formed stream within the limits decodes to exactly the frames sent, however it is
//!   split into reads; no single allocation exceeds what was actually received by more than a
//!   bounded reserve, whatever lengths the headers claim.
//! - Codec: no panic; a message is accepted only if its four signed frames are byte for byte
//!   what was signed and all are JSON objects; a replay of an accepted message is refused.

mod codec;
mod zmtp;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// harness: PRNG, time budget, allocation peak

/// splitmix64: small, fast, good enough to drive mutations.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(super) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// `min` + below(`spread`) random bytes.
    pub(super) fn some_bytes(&mut self, spread: usize, min: usize) -> Vec<u8> {
        let n = self.below(spread) + min;
        self.bytes(n)
    }
}

fn budget() -> Duration {
    let secs = std::env::var("RUSTLOOP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("RUSTLOOP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Runs `case` with fresh generators until the time budget is spent; returns the count.
pub(super) fn run(name: &str, mut case: impl FnMut(&mut Rng, u64)) -> u64 {
    let seed = seed();
    let end = Instant::now() + budget();
    let mut iteration = 0u64;
    while Instant::now() < end {
        let mut rng = Rng(seed ^ iteration.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut rng, iteration)));
        if let Err(panic) = result {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: seed {seed}, iteration {iteration}: {text}");
        }
        iteration += 1;
    }
    eprintln!("{name}: {iteration} cases (seed {seed})");
    iteration
}

/// The test binary's allocator: the system one, also noting the largest single request made
/// by the current thread (so parallel tests do not disturb each other).
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|peak| {
        if size > peak.get() {
            peak.set(size);
        }
    });
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

pub(super) fn take_peak() -> usize {
    PEAK.with(|p| p.replace(0))
}
