//! ZMTP framing: the patched zeromq decoder fed valid and hostile byte streams in reads of
//! random sizes (see the module above for the properties).

use super::{Rng, run, take_peak};
use futures::io::AsyncRead;
use futures::stream::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use zeromq::__bench::{Message, zmq_framed_read_with_options};

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
