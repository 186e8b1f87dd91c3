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

use super::message::{Incoming, Outgoing, Signer};
use super::replay::ReplayGuard;
use bytes::Bytes;
use futures::io::AsyncRead;
use futures::stream::StreamExt;
use serde_json::{Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use zeromq::__bench::{Message, zmq_framed_read_with_options};

// ------------------------------------------------------------------------------------------
// harness: PRNG, time budget, allocation peak

/// splitmix64: small, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// `min` + below(`spread`) random bytes.
    fn some_bytes(&mut self, spread: usize, min: usize) -> Vec<u8> {
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
fn run(name: &str, mut case: impl FnMut(&mut Rng, u64)) -> u64 {
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

fn take_peak() -> usize {
    PEAK.with(|p| p.replace(0))
}

// ------------------------------------------------------------------------------------------
// ZMTP framing

/// The kernel's default limit: the harness checks the configuration that ships.
const LIMIT: usize = crate::limits::DEFAULT;
/// What the decoder may reserve beyond the bytes received: its eager reserve (4 MiB ahead),
/// doubled when the buffer grows, plus a read chunk.
const SLACK: usize = 8 * 1024 * 1024 + 256 * 1024;

/// Serves `data` in reads of random sizes.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    rng: Rng,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let left = self.data.len() - self.at;
        let n = match self.rng.below(4) {
            0 => 1,
            1 => self.rng.below(16) + 1,
            _ => self.rng.below(70_000) + 1,
        }
        .min(left)
        .min(buf.len());
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn frame_header(out: &mut Vec<u8>, len: u64, more: bool, command: bool, long: bool) {
    let flags = u8::from(more) | (u8::from(long || len > 255) << 1) | (u8::from(command) << 2);
    out.push(flags);
    if long || len > 255 {
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(len as u8);
    }
}

fn ready_command() -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"DEALER");
    let mut out = Vec::new();
    frame_header(&mut out, body.len() as u64, false, true, false);
    out.extend_from_slice(&body);
    out
}

/// A stream of well-formed messages within the limits: (bytes, the messages' frames).
fn valid_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let mut out = greeting();
    out.extend(ready_command());
    let mut messages = Vec::new();
    for _ in 0..rng.below(6) + 1 {
        let frames: Vec<Vec<u8>> = (0..rng.below(8) + 1)
            .map(|_| {
                let len = match rng.below(10) {
                    0 => 0,
                    1..=6 => rng.below(300),
                    7 | 8 => rng.below(5000),
                    _ => rng.below(300_000),
                };
                rng.bytes(len)
            })
            .collect();
        for (i, frame) in frames.iter().enumerate() {
            let long = rng.chance(8); // a long header for a short frame is legal
            frame_header(
                &mut out,
                frame.len() as u64,
                i + 1 < frames.len(),
                false,
                long,
            );
            out.extend_from_slice(frame);
        }
        messages.push(frames);
    }
    (out, messages)
}

/// A claimed length that is hostile: huge, just over or under the limit, or anything.
fn hostile_len(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => u64::MAX,
        1 => 1 << 62, // 4 EiB
        2 => 64 << 30,
        3 => LIMIT as u64 + 1,
        4 => LIMIT as u64 - rng.below(64) as u64,
        5 => (isize::MAX as u64) - rng.below(1 << 20) as u64,
        _ => rng.next(),
    }
}

/// Valid traffic, then damage: lying lengths, flipped bytes, truncation, random tails,
/// many tiny frames in one message.
fn hostile_stream(rng: &mut Rng) -> Vec<u8> {
    let (mut out, _) = valid_stream(rng);
    match rng.below(6) {
        0 => {
            frame_header(
                &mut out,
                hostile_len(rng),
                rng.chance(2),
                rng.chance(4),
                true,
            );
            let tail = rng.below(100_000);
            out.extend(rng.bytes(tail));
        }
        1 => {
            for _ in 0..rng.below(20) + 1 {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
        }
        2 => out.truncate(rng.below(out.len())),
        3 => {
            let n = rng.below(2000);
            out.extend(rng.bytes(n));
        }
        4 => {
            // A multipart message that adds up past the limit in several honest-looking frames.
            let frames = rng.below(4) + 2;
            for i in 0..frames {
                frame_header(&mut out, (LIMIT / 3) as u64, i + 1 < frames, false, true);
                let sent = rng.below(3000);
                out.extend(rng.bytes(sent));
            }
        }
        _ => {
            // Thousands of empty "more" frames.
            for _ in 0..rng.below(50_000) {
                out.extend_from_slice(&[1, 0]);
            }
        }
    }
    out
}

/// Decodes everything the stream yields under `limit`: (messages, ended with an error).
fn decode(data: Vec<u8>, rng: &mut Rng, limit: usize) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut options = zeromq::SocketOptions::default();
    options.max_message_size(limit, limit);
    let reader = Chunked {
        data,
        at: 0,
        rng: Rng(rng.next()),
    };
    let mut framed = zmq_framed_read_with_options(reader, Arc::new(options));
    let mut messages = Vec::new();
    futures::executor::block_on(async {
        while let Some(item) = framed.next().await {
            match item {
                Ok(Message::Message(m)) => {
                    messages.push(m.into_vec().into_iter().map(|b| b.to_vec()).collect())
                }
                Ok(_) => {}
                Err(_) => return (messages, true),
            }
        }
        (messages, false)
    })
}

#[test]
fn fuzz_zmtp_framing() {
    let cases = run("fuzz_zmtp_framing", |rng, iteration| {
        take_peak();
        // The shipped limit, or a small one so that honest-looking traffic crosses it.
        let limit = if rng.chance(2) {
            LIMIT
        } else {
            rng.below(1 << 20) + 64
        };
        let size = |message: &Vec<Vec<u8>>| message.iter().map(|f| f.len() + 32).sum::<usize>();
        if iteration % 2 == 0 {
            let (bytes, sent) = valid_stream(rng);
            let len = bytes.len();
            let (got, failed) = decode(bytes, rng, limit);
            // Exactly the messages before the first one over the limit, then an error.
            let fitting = sent.iter().take_while(|&m| size(m) <= limit).count();
            assert_eq!(failed, fitting < sent.len(), "limit {limit}");
            assert_eq!(got, sent[..fitting], "a valid stream decoded differently");
            assert!(take_peak() <= 2 * len + SLACK);
        } else {
            let bytes = hostile_stream(rng);
            let len = bytes.len();
            let (got, _) = decode(bytes, rng, limit);
            for message in &got {
                assert!(
                    size(message) <= limit,
                    "{} bytes got through",
                    size(message)
                );
            }
            let peak = take_peak();
            assert!(
                peak <= 2 * len + SLACK,
                "allocated {peak} bytes at once for {len} bytes received"
            );
        }
    });
    assert!(cases > 0);
}

#[test]
fn zmtp_lying_lengths_are_errors_before_allocation() {
    let mut rng = Rng(7);
    for claim in [1u64 << 62, 64 << 30, u64::MAX, LIMIT as u64 + 1] {
        for command in [false, true] {
            let mut bytes = greeting();
            bytes.extend(ready_command());
            frame_header(&mut bytes, claim, false, command, true);
            bytes.extend_from_slice(b"a few bytes");
            take_peak();
            let (got, failed) = decode(bytes, &mut rng, LIMIT);
            assert!(got.is_empty() && failed, "claim {claim} was not refused");
            assert!(take_peak() < SLACK, "claim {claim} allocated too much");
        }
    }
    // Just under the limit is accepted as a claim: memory grows only with what arrives.
    let mut bytes = greeting();
    bytes.extend(ready_command());
    frame_header(&mut bytes, (LIMIT - 64) as u64, false, false, true);
    bytes.extend_from_slice(&[0u8; 1000]);
    take_peak();
    let (got, failed) = decode(bytes, &mut rng, LIMIT);
    assert!(
        got.is_empty() && failed,
        "a truncated frame is an error at EOF"
    );
    assert!(take_peak() < SLACK);
}

#[test]
fn zmtp_message_limit_counts_all_frames() {
    let mut rng = Rng(11);
    let stream = |frames: &[usize]| {
        let mut bytes = greeting();
        bytes.extend(ready_command());
        for (i, &len) in frames.iter().enumerate() {
            frame_header(&mut bytes, len as u64, i + 1 < frames.len(), false, false);
            bytes.extend(std::iter::repeat_n(b'x', len));
        }
        bytes
    };
    let (got, failed) = decode(stream(&[20_000, 20_000, 20_000]), &mut rng, 65536);
    assert_eq!((got.len(), failed), (1, false));
    let (got, failed) = decode(stream(&[30_000, 30_000, 30_000]), &mut rng, 65536);
    assert_eq!((got.len(), failed), (0, true));
    // 32 bytes a frame: 2100 empty frames are 67200 bytes of bookkeeping.
    let (got, failed) = decode(stream(&[0; 2100]), &mut rng, 65536);
    assert_eq!((got.len(), failed), (0, true));
    let (got, failed) = decode(stream(&[0; 2000]), &mut rng, 65536);
    assert_eq!((got.len(), failed), (1, false));
}

// ------------------------------------------------------------------------------------------
// Jupyter message codec

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!(String::from_utf8_lossy(&rng.some_bytes(20, 0)).into_owned()),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Value {
    Value::Object(
        (0..rng.below(5))
            .map(|i| (format!("k{i}"), random_json(rng, depth + 1)))
            .collect(),
    )
}

fn message(rng: &mut Rng, signer: &Signer) -> Vec<Bytes> {
    let mut out = Outgoing::new("execute_request", random_object(rng, 0));
    out.metadata = random_object(rng, 0);
    out.identities = (0..rng.below(3))
        .map(|_| Bytes::from(rng.some_bytes(10, 1)))
        .collect();
    out.buffers = (0..rng.below(3))
        .map(|_| Bytes::from(rng.some_bytes(100, 0)))
        .collect();
    if rng.chance(2) {
        out.parent = Some(Bytes::from(random_object(rng, 0).to_string()));
    }
    out.encode(signer, "fuzz")
}

/// The four signed frames of a frame list, if it has a delimiter and enough frames.
fn signed_part(frames: &[Bytes]) -> Option<Vec<Bytes>> {
    let at = frames.iter().position(|f| f.as_ref() == b"<IDS|MSG>")?;
    Some(frames.get(at + 2..at + 6)?.to_vec())
}

fn mutate(rng: &mut Rng, frames: &mut Vec<Bytes>) {
    for _ in 0..rng.below(3) + 1 {
        if frames.is_empty() {
            frames.push(Bytes::from(rng.bytes(5)));
        }
        let i = rng.below(frames.len());
        let mut frame = frames[i].to_vec();
        match rng.below(8) {
            0 if !frame.is_empty() => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            1 => frame.truncate(rng.below(frame.len() + 1)),
            2 => {
                let at = rng.below(frame.len() + 1);
                let extra = rng.some_bytes(4, 1);
                let _ = frame.splice(at..at, extra);
            }
            3 => frame = br#"["x","execute_request"]"#.to_vec(),
            4 => {
                frames.remove(i);
                continue;
            }
            5 => {
                let j = rng.below(frames.len());
                frames.swap(i, j);
                continue;
            }
            6 => {
                frames.insert(i, Bytes::from_static(b"<IDS|MSG>"));
                continue;
            }
            _ => frame = rng.some_bytes(40, 0),
        }
        if i < frames.len() {
            frames[i] = Bytes::from(frame);
        }
    }
}

fn is_object_frame(frame: &[u8]) -> bool {
    frame.is_empty() || serde_json::from_slice::<Value>(frame).is_ok_and(|v| v.is_object())
}

#[test]
fn fuzz_message_codec() {
    let cases = run("fuzz_message_codec", |rng, _| {
        let key = if rng.chance(5) {
            String::new()
        } else {
            format!("{:x}", rng.next())
        };
        let signer = Signer::new(&key);
        let guard = ReplayGuard::new();
        let original = message(rng, &signer);
        let signed = signed_part(&original).unwrap();
        // An honest message is accepted once, then refused as a replay (when signed).
        let decoded = Incoming::decode(original.clone(), &signer).expect("an honest message");
        assert!(guard.first_time(&decoded.signature));
        assert_eq!(decoded.raw_header, signed[0]);
        let again = Incoming::decode(original.clone(), &signer).unwrap();
        assert_eq!(guard.first_time(&again.signature), key.is_empty());

        let mut frames = original.clone();
        mutate(rng, &mut frames);
        if let Ok(incoming) = Incoming::decode(frames.clone(), &signer) {
            let got = signed_part(&frames).expect("accepted without the frames");
            if !key.is_empty() {
                assert_eq!(got, signed, "a tampered signed frame was accepted");
                assert!(
                    !guard.first_time(&incoming.signature),
                    "a replay was accepted"
                );
            }
            assert!(
                got.iter().all(|f| is_object_frame(f)),
                "a non-object was accepted"
            );
            assert!(!got[0].is_empty());
            assert!(incoming.content.is_object());
        }
        // Pure garbage never panics.
        let garbage: Vec<Bytes> = (0..rng.below(9))
            .map(|_| match rng.below(4) {
                0 => Bytes::from_static(b"<IDS|MSG>"),
                1 => Bytes::from(random_json(rng, 0).to_string()),
                _ => Bytes::from(rng.some_bytes(30, 0)),
            })
            .collect();
        if let Ok(incoming) = Incoming::decode(garbage, &signer) {
            assert!(key.is_empty() || !incoming.signature.is_empty());
            assert!(incoming.content.is_object());
        }
    });
    assert!(cases > 0);
}
