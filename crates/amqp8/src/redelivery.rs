//! Counting redeliveries so that a message that keeps failing goes to the dead-letter
//! queue instead of looping forever.
//!
//! Classic queues only say `redelivered: true`; quorum queues also give
//! `x-delivery-count`. amqp8 keeps its own count per message, shared by every consumer
//! of one broker handle and surviving reconnects: each delivery flagged `redelivered`
//! bumps the count of its key (the `message_id` property when the publisher set one,
//! as amqp8 always does; otherwise a hash of exchange, routing key and body). The
//! count used is the larger of that and `x-delivery-count`. The table is bounded
//! (oldest entries forgotten first); a process restart forgets it, which is what
//! `x-delivery-count` covers on quorum queues. See docs/AMQP.md.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Identifies a message across redeliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MessageKey(u64);

impl MessageKey {
    /// The key of a message: its id when it has one, else its content.
    pub(crate) fn of(
        message_id: Option<&str>,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Self {
        let mut h = DefaultHasher::new();
        match message_id {
            Some(id) if !id.is_empty() => {
                0u8.hash(&mut h);
                id.hash(&mut h);
            }
            _ => {
                1u8.hash(&mut h);
                exchange.hash(&mut h);
                routing_key.hash(&mut h);
                body.hash(&mut h);
            }
        }
        MessageKey(h.finish())
    }
}

/// Redelivery counts, bounded.
#[derive(Debug)]
pub(crate) struct Redeliveries {
    capacity: usize,
    /// Entries in the table: first deliveries skip the lock when it is empty.
    len: AtomicUsize,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    seq: u64,
    counts: HashMap<MessageKey, (u32, u64)>,
}

impl Default for Redeliveries {
    fn default() -> Self {
        Redeliveries::with_capacity(100_000)
    }
}

impl Redeliveries {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Redeliveries {
            capacity: capacity.max(2),
            len: AtomicUsize::new(0),
            inner: Mutex::new(Table::default()),
        }
    }

    /// Records a delivery; returns how many times the message was redelivered so far
    /// (0 for a first delivery).
    pub(crate) fn record(&self, key: MessageKey, redelivered: bool) -> u32 {
        if !redelivered && self.is_empty() {
            return 0;
        }
        let mut t = self.inner.lock();
        if !redelivered {
            // A first delivery: a stale count (same content published again) is reset.
            t.counts.remove(&key);
            self.len.store(t.counts.len(), Ordering::Relaxed);
            return 0;
        }
        t.seq += 1;
        let seq = t.seq;
        let entry = t.counts.entry(key).or_insert((0, seq));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = seq;
        let n = entry.0;
        if t.counts.len() > self.capacity {
            let keep_from = seq.saturating_sub((self.capacity / 2) as u64);
            t.counts.retain(|_, (_, s)| *s > keep_from);
        }
        self.len.store(t.counts.len(), Ordering::Relaxed);
        n
    }

    /// Whether no message is being counted (then a first delivery costs no lock).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// The message was settled for good (acked or dead-lettered).
    pub(crate) fn forget(&self, key: MessageKey) {
        if self.is_empty() {
            return;
        }
        let mut t = self.inner.lock();
        t.counts.remove(&key);
        self.len.store(t.counts.len(), Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_redeliveries_per_key_and_resets_on_first_delivery() {
        let r = Redeliveries::default();
        let a = MessageKey::of(Some("a"), "x", "k", b"1");
        let b = MessageKey::of(None, "x", "k", b"1");
        assert_ne!(a, b);
        assert_eq!(r.record(a, false), 0);
        assert_eq!(r.record(a, true), 1);
        assert_eq!(r.record(a, true), 2);
        assert_eq!(r.record(b, true), 1);
        r.forget(a);
        assert_eq!(r.record(a, true), 1);
        assert_eq!(r.record(a, false), 0);
        assert_eq!(r.record(a, true), 1);
    }

    #[test]
    fn content_keys_differ_by_routing_key_and_body() {
        let k = |rk: &str, body: &[u8]| MessageKey::of(None, "x", rk, body);
        assert_eq!(k("a", b"1"), k("a", b"1"));
        assert_ne!(k("a", b"1"), k("b", b"1"));
        assert_ne!(k("a", b"1"), k("a", b"2"));
        // An empty message id falls back to the content.
        assert_eq!(MessageKey::of(Some(""), "x", "a", b"1"), k("a", b"1"));
    }

    fn key(i: u32) -> MessageKey {
        MessageKey::of(Some(&i.to_string()), "", "", b"")
    }

    #[test]
    fn a_full_table_is_not_pruned_and_one_more_keeps_exactly_the_newest_half() {
        let r = Redeliveries::with_capacity(100);
        for i in 0..100 {
            assert_eq!(r.record(key(i), true), 1);
        }
        // At capacity: nothing forgotten yet (the oldest counts on).
        assert_eq!(r.len(), 100);
        assert_eq!(r.record(key(0), true), 2);
        // key 0 is now the newest (seq 101). One entry more than the capacity (seq
        // 102): the newest half (seq 53..=102, 50 entries) is kept, the rest forgotten.
        assert_eq!(r.record(key(100), true), 1);
        assert_eq!(r.len(), 50);
        assert_eq!(r.record(key(0), true), 3, "recently counted: kept");
        assert_eq!(r.record(key(99), true), 2, "recent: kept");
        assert_eq!(r.record(key(52), true), 2, "seq 53: the oldest kept");
        assert_eq!(r.record(key(51), true), 1, "seq 52: forgotten");
        assert_eq!(r.record(key(1), true), 1, "old: forgotten");
    }

    #[test]
    fn counts_under_capacity_are_never_pruned() {
        let r = Redeliveries::with_capacity(100);
        for i in 0..80 {
            r.record(key(i), true);
        }
        assert_eq!(r.len(), 80);
        assert_eq!(r.record(key(0), true), 2);
    }

    #[test]
    fn empty_until_a_redelivery_is_counted_and_again_once_forgotten() {
        let r = Redeliveries::default();
        assert!(r.is_empty());
        assert_eq!(r.record(key(1), false), 0);
        assert!(r.is_empty(), "a first delivery is not counted");
        r.record(key(1), true);
        assert!(!r.is_empty());
        r.forget(key(1));
        assert!(r.is_empty());
    }

    #[test]
    fn table_stays_bounded_and_keeps_recent_entries() {
        let r = Redeliveries::with_capacity(100);
        for i in 0..1000u32 {
            r.record(MessageKey::of(Some(&i.to_string()), "", "", b""), true);
        }
        assert!(r.len() <= 100, "{}", r.len());
        let last = MessageKey::of(Some("999"), "", "", b"");
        assert_eq!(r.record(last, true), 2);
    }
}
