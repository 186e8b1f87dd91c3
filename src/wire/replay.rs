//! Replay protection: a verified message whose signature was already seen in this session is
//! dropped, as jupyter_client's `Session` does ("Duplicate Signature").
//!
//! A signature is the HMAC of header, parent_header, metadata and content, and every honest
//! request has a fresh `msg_id` in its header, so a repeated signature means the very same
//! message sent again. The history is bounded ([`CAPACITY`] signatures, oldest forgotten first;
//! jupyter_client keeps 2^16 too). Unsigned connections (empty key) have no signatures to
//! compare, so nothing is dropped there.

use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Signatures remembered (64 hex bytes each: about 10 MiB at most with the set's overhead).
pub const CAPACITY: usize = 1 << 16;

/// Shared by all channels of one kernel (cheap to clone).
#[derive(Clone, Default)]
pub struct ReplayGuard {
    inner: Arc<Mutex<History>>,
}

#[derive(Default)]
struct History {
    seen: HashSet<Bytes>,
    order: VecDeque<Bytes>,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// True the first time `signature` is offered, false for a replay. Empty signatures
    /// (unsigned connections) always pass.
    pub fn first_time(&self, signature: &Bytes) -> bool {
        if signature.is_empty() {
            return true;
        }
        let mut history = self.inner.lock().unwrap();
        if history.seen.contains(signature) {
            return false;
        }
        if history.order.len() >= CAPACITY
            && let Some(oldest) = history.order.pop_front()
        {
            history.seen.remove(&oldest);
        }
        // Own the bytes: a slice of the received buffer would keep the whole buffer alive.
        let owned = Bytes::copy_from_slice(signature);
        history.seen.insert(owned.clone());
        history.order.push_back(owned);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: usize) -> Bytes {
        Bytes::from(format!("{n:064x}"))
    }

    #[test]
    fn replays_are_refused_unsigned_messages_pass() {
        let guard = ReplayGuard::new();
        assert!(guard.first_time(&sig(1)));
        assert!(guard.first_time(&sig(2)));
        assert!(!guard.first_time(&sig(1)));
        assert!(
            !guard.clone().first_time(&sig(2)),
            "clones share the history"
        );
        assert!(guard.first_time(&Bytes::new()));
        assert!(guard.first_time(&Bytes::new()));
    }

    #[test]
    fn history_is_bounded_oldest_first() {
        let guard = ReplayGuard::new();
        for n in 0..CAPACITY + 10 {
            assert!(guard.first_time(&sig(n)));
        }
        let history = guard.inner.lock().unwrap();
        assert_eq!(history.seen.len(), CAPACITY);
        assert_eq!(history.order.len(), CAPACITY);
        drop(history);
        // The ten oldest were forgotten; the newest are still refused.
        assert!(!guard.first_time(&sig(CAPACITY + 9)));
        assert!(!guard.first_time(&sig(10)));
        assert!(guard.first_time(&sig(0)));
    }
}
