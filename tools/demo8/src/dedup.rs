//! Recognising copies by the AMQP `message_id` (docs/AMQP.md, "Message identity"): a
//! bounded set of the ids seen, the oldest forgotten first.

use std::collections::{HashSet, VecDeque};

/// How many ids a [`SeenIds`] remembers by default (a copy comes soon after its
/// original: a re-publish after a lost confirm, an expired claim or lease).
pub const REMEMBERED_IDS: usize = 10_000;

/// The ids seen, at most a capacity of them (oldest forgotten first).
#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::with_capacity(REMEMBERED_IDS)
    }
}

impl SeenIds {
    /// Remembering at most `capacity` ids (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        SeenIds {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` was inserted (and not forgotten since).
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Remembers `id`; `false` when it was already there (a copy).
    pub fn insert(&mut self, id: String) -> bool {
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_recognised_and_memory_is_bounded() {
        let mut s = SeenIds::with_capacity(2);
        assert!(s.insert("a".into()));
        assert!(!s.insert("a".into()), "a copy");
        assert!(s.insert("b".into()));
        assert!(s.insert("c".into()));
        assert_eq!(s.len(), 2);
        assert!(!s.contains("a"), "the oldest forgotten");
        assert!(s.contains("b") && s.contains("c"));
    }
}
