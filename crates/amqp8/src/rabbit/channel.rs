//! Opening channels with a callback that records why the broker closed them and
//! forwards confirms, returns and cancellations to their owner.
//!
//! The owner learns that the channel is gone when its event receiver ends: amqprs
//! drops the callback (and with it the sender) when the channel's dispatcher stops,
//! whether the broker closed the channel or the connection died.

use parking_lot::Mutex;
use std::sync::Arc;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::Channel;
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc;

/// Something the broker said on a channel.
#[derive(Debug)]
pub(crate) enum ChanEvent {
    /// Publisher confirm.
    Ack { tag: u64, multiple: bool },
    /// Negative publisher confirm.
    Nack { tag: u64, multiple: bool },
    /// A mandatory message came back unroutable (its confirm follows).
    Return { message_id: Option<String> },
    /// The broker cancelled a consumer (e.g. its queue was deleted).
    Cancelled { consumer_tag: String },
}

/// Why the broker closed a channel: reply code and text.
#[derive(Debug, Clone, Default)]
pub(crate) struct CloseSlot(Arc<Mutex<Option<(u16, String)>>>);

impl CloseSlot {
    pub(crate) fn get(&self) -> Option<(u16, String)> {
        self.0.lock().clone()
    }

    fn set(&self, code: u16, text: String) {
        *self.0.lock() = Some((code, text));
    }
}

struct Events {
    close: CloseSlot,
    tx: Option<mpsc::UnboundedSender<ChanEvent>>,
}

impl Events {
    fn send(&self, e: ChanEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
}

#[async_trait]
impl ChannelCallback for Events {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::debug!(code = close.reply_code(), text = %close.reply_text(), "RabbitMQ closed a channel");
        self.close
            .set(close.reply_code(), close.reply_text().clone());
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        self.send(ChanEvent::Cancelled {
            consumer_tag: cancel.consumer_tag().clone(),
        });
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.send(ChanEvent::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.send(ChanEvent::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }

    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        props: BasicProperties,
        _: Vec<u8>,
    ) {
        tracing::debug!(code = ret.reply_code(), text = %ret.reply_text(), exchange = %ret.exchange(),
            routing_key = %ret.routing_key(), "RabbitMQ returned a mandatory message");
        self.send(ChanEvent::Return {
            message_id: props.message_id().cloned(),
        });
    }
}

/// Opens a channel with the recording callback registered; `events` receives what the
/// broker says on it and ends when the channel is gone.
pub(crate) async fn open(
    conn: &Connection,
    events: Option<mpsc::UnboundedSender<ChanEvent>>,
) -> Result<(Channel, CloseSlot), amqprs::error::Error> {
    let channel = conn.open_channel(None).await?;
    let close = CloseSlot::default();
    channel
        .register_callback(Events {
            close: close.clone(),
            tx: events,
        })
        .await?;
    Ok((channel, close))
}
