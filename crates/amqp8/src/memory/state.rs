//! The in-memory broker's exchanges, queues, bindings and unacknowledged deliveries.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::broker::{ArgValue, BindingDecl, ExchangeDecl, PublishOutcome, QueueDecl, Topology};
use crate::error::AmqpError;
use crate::headers;

/// A message held by the in-memory broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Body.
    pub body: Vec<u8>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The AMQP `app_id` property.
    pub app_id: Option<String>,
    /// Delivered before and returned to the queue.
    pub redelivered: bool,
    /// Times it was returned to the queue (what quorum queues report as
    /// `x-delivery-count`).
    pub returned: u64,
    /// The message id (amqp8 gives every message one).
    pub message_id: String,
}

impl StoredMessage {
    /// A fresh message, e.g. to [`inject`](super::MemoryBroker::inject) into a queue.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        StoredMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            headers: BTreeMap::new(),
            app_id: None,
            redelivered: false,
            returned: 0,
            message_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    DropHead,
    RejectPublish,
}

#[derive(Debug)]
pub(crate) struct MemQueue {
    pub(crate) decl: QueueDecl,
    pub(crate) ready: VecDeque<StoredMessage>,
    max_length: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Overflow,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
    pub(crate) quorum: bool,
}

impl MemQueue {
    fn new(decl: &QueueDecl) -> Result<Self, AmqpError> {
        let refuse = |reason: String| AmqpError::Refused {
            operation: format!("queue.declare {}", decl.name),
            reason,
        };
        let int = |key: &str| -> Result<Option<u64>, AmqpError> {
            match decl.arguments.get(key) {
                None => Ok(None),
                Some(ArgValue::Int(n)) if *n >= 0 => Ok(Some(*n as u64)),
                Some(other) => Err(refuse(format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue '{}': {other:?} is not a non-negative integer",
                    decl.name
                ))),
            }
        };
        let string = |key: &str| -> Result<Option<String>, AmqpError> {
            match decl.arguments.get(key) {
                None => Ok(None),
                Some(ArgValue::Str(s)) => Ok(Some(s.clone())),
                Some(other) => Err(refuse(format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue '{}': {other:?} is not a string",
                    decl.name
                ))),
            }
        };
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") | Some("reject-publish-dlx") => Overflow::RejectPublish,
            Some(other) => {
                return Err(refuse(format!(
                    "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{}': {other:?}",
                    decl.name
                )));
            }
        };
        Ok(MemQueue {
            decl: decl.clone(),
            ready: VecDeque::new(),
            max_length: int("x-max-length")?,
            max_bytes: int("x-max-length-bytes")?,
            overflow,
            dead_letter_exchange: string("x-dead-letter-exchange")?,
            dead_letter_routing_key: string("x-dead-letter-routing-key")?,
            quorum: string("x-queue-type")?.as_deref() == Some("quorum"),
        })
    }

    fn full_for(&self, extra_bytes: usize) -> bool {
        let len_full = self
            .max_length
            .is_some_and(|m| self.ready.len() as u64 >= m);
        let bytes_full = self.max_bytes.is_some_and(|m| {
            let used: usize = self.ready.iter().map(|r| r.body.len()).sum();
            (used + extra_bytes) as u64 > m
        });
        len_full || bytes_full
    }
}

/// A delivery handed to a consumer and not settled yet.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) queue: String,
    pub(crate) consumer: u64,
    pub(crate) message: StoredMessage,
}

/// Everything the in-memory broker holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) exchanges: BTreeMap<String, String>,
    pub(crate) queues: BTreeMap<String, MemQueue>,
    pub(crate) bindings: Vec<BindingDecl>,
    pub(crate) unacked: HashMap<u64, Unacked>,
    pub(crate) held: HashMap<u64, usize>,
    next_delivery: u64,
    next_message: u64,
}

const KINDS: [&str; 4] = ["topic", "direct", "fanout", "headers"];

impl State {
    pub(crate) fn new() -> Self {
        let mut s = State::default();
        for kind in KINDS {
            s.exchanges.insert(format!("amq.{kind}"), kind.to_owned());
        }
        s
    }

    /// Declares a topology the way RabbitMQ checks it: equivalent redeclarations are
    /// fine, different ones are refused, bindings need both ends.
    pub(crate) fn declare(&mut self, t: &Topology) -> Result<(), AmqpError> {
        for e in &t.exchanges {
            self.declare_exchange(e)?;
        }
        for q in &t.queues {
            self.declare_queue(q)?;
        }
        for b in &t.bindings {
            self.bind(b)?;
        }
        Ok(())
    }

    fn declare_exchange(&mut self, e: &ExchangeDecl) -> Result<(), AmqpError> {
        let refuse = |reason: String| {
            Err(AmqpError::Refused {
                operation: format!("exchange.declare {}", e.name),
                reason,
            })
        };
        if e.name.is_empty() || e.name.starts_with("amq.") {
            return refuse(format!(
                "ACCESS_REFUSED - exchange name '{}' contains reserved prefix 'amq.'",
                e.name
            ));
        }
        if !KINDS.contains(&e.kind.as_str()) {
            return refuse(format!(
                "COMMAND_INVALID - unknown exchange type '{}'",
                e.kind
            ));
        }
        let kind = self
            .exchanges
            .entry(e.name.clone())
            .or_insert_with(|| e.kind.clone());
        if *kind != e.kind {
            return refuse(format!(
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{}': received '{}' but current is '{kind}'",
                e.name, e.kind
            ));
        }
        Ok(())
    }

    fn declare_queue(&mut self, q: &QueueDecl) -> Result<(), AmqpError> {
        let fresh = MemQueue::new(q)?;
        let existing = self.queues.entry(q.name.clone()).or_insert(fresh);
        if existing.decl.arguments != q.arguments {
            return Err(AmqpError::Refused {
                operation: format!("queue.declare {}", q.name),
                reason: format!(
                    "PRECONDITION_FAILED - inequivalent arguments for queue '{}': received {:?} but current is {:?}",
                    q.name, q.arguments, existing.decl.arguments
                ),
            });
        }
        Ok(())
    }

    fn bind(&mut self, b: &BindingDecl) -> Result<(), AmqpError> {
        let op = || {
            format!(
                "queue.bind {} to {} ({})",
                b.queue, b.exchange, b.routing_key
            )
        };
        if !self.exchanges.contains_key(&b.exchange) {
            return Err(AmqpError::Refused {
                operation: op(),
                reason: format!("NOT_FOUND - no exchange '{}'", b.exchange),
            });
        }
        if !self.queues.contains_key(&b.queue) {
            return Err(AmqpError::Refused {
                operation: op(),
                reason: format!("NOT_FOUND - no queue '{}'", b.queue),
            });
        }
        if !self.bindings.contains(b) {
            self.bindings.push(b.clone());
        }
        Ok(())
    }

    /// What was declared, for recovery checks in tests.
    pub(crate) fn topology(&self) -> Topology {
        Topology {
            exchanges: self
                .exchanges
                .iter()
                .filter(|(n, _)| !n.starts_with("amq."))
                .map(|(name, kind)| ExchangeDecl {
                    name: name.clone(),
                    kind: kind.clone(),
                })
                .collect(),
            queues: self.queues.values().map(|q| q.decl.clone()).collect(),
            bindings: self.bindings.clone(),
        }
    }

    /// Removes a queue with its bindings and messages; returns how many messages it held.
    pub(crate) fn delete_queue(&mut self, name: &str) -> Option<u32> {
        let q = self.queues.remove(name)?;
        self.bindings.retain(|b| b.queue != name);
        for id in self.unacked_ids(|u| u.queue == name) {
            self.settle(id);
        }
        Some(q.ready.len() as u32)
    }

    /// The queues a message published to `exchange` with `routing_key` reaches.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, AmqpError> {
        if exchange.is_empty() {
            return Ok(self
                .queues
                .contains_key(routing_key)
                .then(|| routing_key.to_owned())
                .into_iter()
                .collect());
        }
        let Some(kind) = self.exchanges.get(exchange) else {
            return Err(AmqpError::Refused {
                operation: format!("basic.publish to exchange {exchange}"),
                reason: format!("NOT_FOUND - no exchange '{exchange}'"),
            });
        };
        let mut out: Vec<String> = Vec::new();
        for b in self.bindings.iter().filter(|b| b.exchange == exchange) {
            if model8::topic::routes(kind, &b.routing_key, routing_key) && !out.contains(&b.queue) {
                out.push(b.queue.clone());
            }
        }
        Ok(out)
    }

    /// Publishes a message: routes it, applies length limits, and answers as a broker
    /// with publisher confirms would.
    pub(crate) fn publish(
        &mut self,
        mut message: StoredMessage,
        mandatory: bool,
    ) -> Result<PublishOutcome, AmqpError> {
        let targets = self.route(&message.exchange, &message.routing_key)?;
        if targets.is_empty() {
            return Ok(if mandatory {
                PublishOutcome::Unroutable
            } else {
                PublishOutcome::Confirmed
            });
        }
        if message.message_id.is_empty() {
            self.next_message += 1;
            message.message_id = format!("mem-{}", self.next_message);
        }
        let mut rejected = false;
        let mut dropped = Vec::new();
        for name in targets {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            if q.full_for(message.body.len()) {
                match q.overflow {
                    Overflow::RejectPublish => {
                        rejected = true;
                        continue;
                    }
                    Overflow::DropHead => {
                        while !q.ready.is_empty() && q.full_for(message.body.len()) {
                            if let Some(old) = q.ready.pop_front() {
                                dropped.push((name.clone(), old, "maxlen"));
                            }
                        }
                        if q.full_for(message.body.len()) {
                            // x-max-length 0, or a body larger than x-max-length-bytes.
                            continue;
                        }
                    }
                }
            }
            q.ready.push_back(message.clone());
        }
        for (queue, old, why) in dropped {
            self.dead_letter_by_queue(&queue, old, why);
        }
        Ok(if rejected {
            PublishOutcome::Nacked
        } else {
            PublishOutcome::Confirmed
        })
    }

    /// What RabbitMQ does with a rejected or dropped message: route it to the queue's
    /// `x-dead-letter-exchange` when it has one, else drop it.
    pub(crate) fn dead_letter_by_queue(
        &mut self,
        queue: &str,
        mut message: StoredMessage,
        why: &str,
    ) {
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        let Some(dlx) = q.dead_letter_exchange.clone() else {
            tracing::debug!(queue, why, "message dropped (no x-dead-letter-exchange)");
            return;
        };
        let key = q
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        message
            .headers
            .insert("x-first-death-reason".into(), why.into());
        message
            .headers
            .insert("x-first-death-queue".into(), queue.into());
        message
            .headers
            .insert("x-first-death-exchange".into(), message.exchange.clone());
        message.exchange = dlx;
        message.routing_key = key;
        message.redelivered = false;
        message.returned = 0;
        let _ = self.publish(message, false);
    }

    /// Takes the next ready message of `queue` for a consumer, respecting its prefetch
    /// (0: no limit). `Some((delivery id, message))`.
    pub(crate) fn take(
        &mut self,
        queue: &str,
        consumer: u64,
        prefetch: u16,
        autoack: bool,
    ) -> Option<(u64, StoredMessage)> {
        let held = self.held.get(&consumer).copied().unwrap_or(0);
        if !autoack && prefetch > 0 && held >= usize::from(prefetch) {
            return None;
        }
        let message = self.queues.get_mut(queue)?.ready.pop_front()?;
        self.next_delivery += 1;
        let id = self.next_delivery;
        if !autoack {
            *self.held.entry(consumer).or_default() += 1;
            self.unacked.insert(
                id,
                Unacked {
                    queue: queue.to_owned(),
                    consumer,
                    message: message.clone(),
                },
            );
        }
        Some((id, message))
    }

    /// The delivery ids of the unacked deliveries `pick` picks.
    fn unacked_ids(&self, pick: impl Fn(&Unacked) -> bool) -> Vec<u64> {
        let picked = self.unacked.iter().filter(|(_, u)| pick(u));
        picked.map(|(id, _)| *id).collect()
    }

    /// Removes an unacked delivery.
    pub(crate) fn settle(&mut self, id: u64) -> Option<Unacked> {
        let u = self.unacked.remove(&id)?;
        if let Some(h) = self.held.get_mut(&u.consumer) {
            *h = h.saturating_sub(1);
        }
        Some(u)
    }

    /// Puts an unacked delivery back at the head of its queue, flagged redelivered.
    pub(crate) fn requeue(&mut self, u: Unacked) {
        let mut m = u.message;
        m.redelivered = true;
        m.returned += 1;
        if let Some(q) = self.queues.get_mut(&u.queue) {
            q.ready.push_front(m);
        }
    }

    /// Returns every unacked delivery (of one consumer, or of all) to its queue, as a
    /// broker does when a channel or connection closes.
    pub(crate) fn return_unacked(&mut self, consumer: Option<u64>) {
        let mut ids = self.unacked_ids(|u| consumer.is_none_or(|c| u.consumer == c));
        // Newest first, so that pushing each to the front restores the original order.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            if let Some(u) = self.settle(id) {
                self.requeue(u);
            }
        }
    }

    /// A copy of a dead-lettered message, with the reason and where it came from.
    pub(crate) fn dead_letter_copy(
        message: &StoredMessage,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        reason: &str,
    ) -> StoredMessage {
        let mut copy = StoredMessage::new(exchange, routing_key, message.body.clone());
        copy.headers = message.headers.clone();
        copy.headers
            .insert(headers::DEATH_REASON.into(), reason.into());
        copy.headers
            .insert(headers::ORIGINAL_EXCHANGE.into(), message.exchange.clone());
        copy.headers.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            message.routing_key.clone(),
        );
        copy.headers
            .insert(headers::ORIGINAL_QUEUE.into(), queue.into());
        copy
    }
}
