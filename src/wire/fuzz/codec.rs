//! The Jupyter message codec and replay protection: honest messages, mutations of them and
//! garbage (see the module above for the properties).

use super::{Rng, run};
use crate::wire::message::{Incoming, Outgoing, Signer};
use crate::wire::replay::ReplayGuard;
use bytes::Bytes;
use serde_json::{Value, json};

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
