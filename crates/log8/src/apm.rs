//! Elastic APM export through `tracing-elastic-apm`, made safe for a busy service.
//!
//! That crate POSTs every closed span as its own request and has no flush. So:
//!
//! - **Only some spans reach it**: spans at level INFO, WARN or ERROR (a `debug_span!` or
//!   `trace_span!` never does), and ERROR events inside such a span (as an APM error).
//!   Per-message work must use `debug_span!`/`trace_span!`; workflow- or cycle-level
//!   spans use `info_span!`. See [`APM_SPAN_LEVEL`].
//! - **It never panics the caller**: the crate `expect`s that an event's enclosing span
//!   is one it saw; an ERROR event inside a span filtered out from APM is not forwarded.
//! - **Shutdown waits a bounded time**: the crate gives no completion signal, so the
//!   guard remembers when the last span was handed over and, at shutdown, waits until
//!   `flush_timeout` after it (not at all when nothing was sent recently).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::ApmOutput;
use crate::error::LogError;

/// The least severe span level exported to APM (INFO: INFO, WARN and ERROR spans).
pub const APM_SPAN_LEVEL: Level = Level::INFO;

/// Whether a span or event goes to APM.
fn exported(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        *meta.level() <= APM_SPAN_LEVEL
    } else {
        *meta.level() == Level::ERROR
    }
}

/// When the last batch was handed to the APM client; shared with the guard.
#[derive(Clone, Default)]
pub(crate) struct LastSent(Arc<Mutex<Option<Instant>>>);

impl LastSent {
    fn mark(&self) {
        *self.0.lock() = Some(Instant::now());
    }

    /// Waits until `timeout` after the last hand-over, if that is still ahead.
    pub(crate) fn wait(&self, timeout: Duration) {
        let last = *self.0.lock();
        if let Some(t) = last {
            let remaining = (t + timeout).saturating_duration_since(Instant::now());
            if !remaining.is_zero() {
                std::thread::sleep(remaining);
            }
        }
    }
}

/// The APM layer, filtered, with its hand-over clock.
pub(crate) type ApmExport<S> = Filtered<SafeApm, FilterFn<fn(&Metadata<'_>) -> bool>, S>;

/// Builds the layer for `cfg`.
pub(crate) fn layer<S>(cfg: &ApmOutput, last_sent: LastSent) -> Result<ApmExport<S>, LogError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_elastic_apm::config::{Authorization, Config, Service};
    let mut config = Config::new(cfg.server_url.clone()).with_service(Service::new(
        Some(env!("CARGO_PKG_VERSION").to_owned()),
        Some(cfg.environment.clone()),
        None,
        None,
        None,
        None,
    ));
    if let Some(token) = &cfg.secret_token {
        config = config.with_authorization(Authorization::SecretToken(token.expose().to_owned()));
    }
    let inner = tracing_elastic_apm::new_layer(cfg.service_name.clone(), config)
        .map_err(|e| LogError::Apm(e.to_string()))?;
    let filter: fn(&Metadata<'_>) -> bool = exported;
    Ok(SafeApm { inner, last_sent }.with_filter(FilterFn::new(filter)))
}

/// Delegates to `tracing-elastic-apm`'s layer, skipping what would make it panic and
/// recording hand-overs.
pub(crate) struct SafeApm {
    inner: tracing_elastic_apm::layer::ApmLayer,
    last_sent: LastSent,
}

impl<S> Layer<S> for SafeApm
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The same parent the inner layer will pick, which it `expect`s to know.
        let parent = if let Some(p) = event.parent() {
            Some(p.clone())
        } else if event.is_root() {
            None
        } else {
            ctx.current_span().id().cloned()
        };
        // Without an exported parent the inner layer sends nothing (or would panic).
        let Some(parent) = parent else { return };
        if ctx.span(&parent).is_none() {
            return;
        }
        self.last_sent.mark();
        self.inner.on_event(event, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.last_sent.mark();
        self.inner.on_close(id, ctx);
    }
}
